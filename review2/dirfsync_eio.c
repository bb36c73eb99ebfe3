// LD_PRELOAD shim: fsync() of a directory fails with EIO (as on a failing disk); files are unaffected.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/stat.h>
int fsync(int fd) {
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) { errno = EIO; return -1; }
    int (*real)(int) = dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}
