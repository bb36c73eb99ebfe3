#ifndef REDISROTATION_CHIREDIS_SHIM_H
#define REDISROTATION_CHIREDIS_SHIM_H
/* hiredis 0.14.1 from Debian's libhiredis-dev. Included by its directory name because hiredis.pc
 * puts /usr/include/hiredis on the path, whose generic names (read.h, sds.h) must not shadow others. */
#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#endif
