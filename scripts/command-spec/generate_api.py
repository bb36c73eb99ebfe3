#!/usr/bin/env python3
"""Generates the typed command API (Sources/RedisRotation/Commands/Generated/RedisCommands+<Group>.swift)
from the COMMAND DOCS of the pinned redis-server in spec/.

For every command and subcommand it writes:
- a command value `RedisCommands.<NAME>` (`RedisCommands.CLIENT.SETNAME` for a subcommand) conforming to
  `RedisTypedCommand`: one stored property per argument, Swift types for the argument structure (enums
  for one-of groups, nested structs for blocks, optionals for optional arguments, arrays for repeated
  ones, `Bool` for optional flags), its reply type (`responses.py`) and its encoding;
- a method on `RedisCommandExecutor` (the pooled client, a leased or single connection) that sends it
  and returns the typed reply, or on `RedisConnection` only when the command changes the connection's
  session (see SESSION below);
- a method on `RedisCommandQueue` (pipelines and transactions) that queues it and returns a typed handle.

Deterministic: the same spec gives the same files. Run from anywhere (generate.py runs it)."""
import json
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from responses import RESPONSES  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
SERIES = "7.0"
DOCS = json.loads((ROOT / f"spec/redis-{SERIES}-command-docs.json").read_text())
INFO = json.loads((ROOT / f"spec/redis-{SERIES}-command-info.json").read_text())
# The arity of every command and subcommand ("CONFIG GET"), counting the name (and subcommand).
ARITY = {}
for _info in INFO:
    ARITY[_info[0].upper()] = _info[1]
    for _sub in _info[9] or []:
        ARITY[_sub[0].upper().replace("|", " ")] = _sub[1]
VERSION = (ROOT / f"spec/redis-{SERIES}-version.txt").read_text().strip()
OUT = ROOT / "Sources/RedisRotation/Commands/Generated"

# Offered elsewhere, not as a generated method: the subscribe family is the pub/sub API (its replies are
# a stream, not one reply per command), MONITOR streams too, and the replication handshake is the
# server's own. Their command values are not generated either. COMMAND DOCS is compared against
# `COMMAND LIST` by a test, with this table as the documented difference.
ELSEWHERE = {
    "SUBSCRIBE": "RedisClient.subscribe(to:) / RedisConnection.subscribe(to:)",
    "PSUBSCRIBE": "RedisClient.psubscribe(to:) / RedisConnection.psubscribe(to:)",
    "SSUBSCRIBE": "RedisClient.ssubscribe(to:) / RedisConnection.ssubscribe(to:)",
    "UNSUBSCRIBE": "ending a subscription's iteration",
    "PUNSUBSCRIBE": "ending a subscription's iteration",
    "SUNSUBSCRIBE": "ending a subscription's iteration",
    "MONITOR": "not offered: a monitoring connection streams replies (use redis-cli MONITOR)",
    "SYNC": "not offered: the replication handshake",
    "PSYNC": "not offered: the replication handshake",
    "REPLCONF": "not offered: the replication handshake",
    "QUIT": "RedisConnection.close()",
}

# Commands that change the connection's session beyond themselves (the client's SessionEffect): no place
# on a pooled executor, so their methods are on RedisConnection only (a single connection, or one lent
# by RedisClient.withConnection, which restores or closes it afterwards). MULTI/EXEC/WATCH are here too:
# RedisClient.transaction is the pooled form.
SESSION = {
    "SELECT", "AUTH", "HELLO", "RESET", "READONLY", "READWRITE", "MULTI", "EXEC", "DISCARD", "WATCH",
    "UNWATCH", "CLIENT SETNAME", "CLIENT REPLY", "CLIENT TRACKING", "CLIENT NO-EVICT", "SCRIPT DEBUG",
}

# Hand-written executor methods (richer types, kept from before the generator) whose generated twin
# would clash with them: the same name and labels, or a call that would be ambiguous (`ping()`,
# `rpop(key)`, a reply type alone telling them apart). For these the generator writes the command value
# and the queue method, not a second executor method. Every other hand-written helper (`set(_:to:)`,
# `lrange(_:from:to:)`, ...) sits next to its generated, specification-shaped twin.
HANDWRITTEN = {"PING", "GET", "INCR", "TTL", "HGET", "HGETALL", "RPOP"}

# Method names that would read as something else on a client: `client.shutdown()` must never stop the
# server for someone who meant to stop the client.
METHOD_RENAMES = {"SHUTDOWN": "shutdownServer"}

# Arguments whose specification type cannot express what the server accepts: score bounds may be
# exclusive or infinite (`(1.5`, `-inf`), which a Double cannot say; WEIGHTS are floats although 7.0's
# COMMAND DOCS calls them integers.
TYPE_OVERRIDES = {
    ("ZCOUNT", "min"): "string", ("ZCOUNT", "max"): "string",
    ("ZRANGEBYSCORE", "min"): "string", ("ZRANGEBYSCORE", "max"): "string",
    ("ZREVRANGEBYSCORE", "min"): "string", ("ZREVRANGEBYSCORE", "max"): "string",
    ("ZREMRANGEBYSCORE", "min"): "string", ("ZREMRANGEBYSCORE", "max"): "string",
    ("ZUNIONSTORE", "weight"): "double", ("ZINTERSTORE", "weight"): "double",
    ("ZUNION", "weight"): "double", ("ZINTER", "weight"): "double",
}

SWIFT_KEYWORDS = {
    "associatedtype", "class", "deinit", "enum", "extension", "fileprivate", "func", "import", "init", "inout",
    "internal", "let", "open", "operator", "private", "protocol", "public", "rethrows", "static", "struct",
    "subscript", "typealias", "var", "break", "case", "continue", "default", "defer", "do", "else",
    "fallthrough", "for", "guard", "if", "in", "repeat", "return", "switch", "where", "while", "as", "Any",
    "catch", "false", "is", "nil", "super", "self", "Self", "throw", "throws", "true", "try", "any", "some",
    "async", "await", "get", "set", "Type", "Protocol", "consume", "copy", "discard", "each", "borrowing",
    "consuming", "package",
}

# Executor member names that already mean something else (RedisClient's and RedisConnection's own API).
RESERVED_METHODS = {"send", "close", "run", "execute", "queue", "pipeline", "transaction", "subscribe",
                    "psubscribe", "ssubscribe", "withConnection", "authenticate", "eval", "fcall"}

GROUP_FILES = {
    "string": "String", "hash": "Hash", "list": "List", "set": "Set", "sorted-set": "SortedSet",
    "stream": "Stream", "geo": "Geo", "hyperloglog": "HyperLogLog", "bitmap": "Bitmap", "scripting": "Scripting",
    "generic": "Generic", "server": "Server", "connection": "Connection", "pubsub": "PubSub",
    "transactions": "Transactions", "cluster": "Cluster",
}


def words(name):
    return [w for w in re.split(r"[^A-Za-z0-9]+", name) if w]


def camel(name):
    parts = words(name)
    if not parts:
        return "value"
    text = parts[0].lower() + "".join(p[:1].upper() + p[1:].lower() for p in parts[1:])
    if text[0].isdigit():
        text = "_" + text
    return text


def pascal(name):
    text = "".join(p[:1].upper() + p[1:].lower() for p in words(name))
    if not text or text[0].isdigit():
        text = "Value" + text
    if text in ("Type", "Protocol", "Self", "Any", "Response", "Optional"):
        text += "Option"
    return text


def ident(text):
    return f"`{text}`" if text in SWIFT_KEYWORDS else text


def plural(name):
    if name.endswith("s") or name.endswith("data"):
        return name
    if name.endswith("x"):
        return name + "es"
    if name.endswith("y") and not name.endswith("ey"):
        return name[:-1] + "ies"
    return name + "s"


def swift_string(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def doc_text(text):
    return " ".join(text.split())


def collapse(spec):
    """A block of one argument is that argument (CONFIG GET's `parameter` block is a repeated string),
    when their tokens and repetitions do not both need a place."""
    children = spec.get("arguments", [])
    if spec["type"] != "block" or len(children) != 1:
        return spec
    child = children[0]
    flags = set(spec.get("flags", []))
    child_flags = set(child.get("flags", []))
    if (spec.get("token") and child.get("token")) or ("multiple" in flags and "multiple" in child_flags):
        return spec
    if ("optional" in child_flags) and ("multiple" in flags):
        return spec
    merged = dict(child)
    merged["name"] = spec["name"] if child["type"] in ("oneof", "block") else child["name"]
    merged["flags"] = sorted(flags | child_flags)
    if spec.get("token"):
        merged["token"] = spec["token"]
    return merged


class Arg:
    """One argument of the spec, with the Swift names and types chosen for it."""

    def __init__(self, spec, scope_names):
        spec = collapse(spec)
        self.spec = spec
        self.name = spec["name"]
        self.type = spec["type"]
        self.token = spec.get("token")
        flags = set(spec.get("flags", []))
        self.optional = "optional" in flags
        self.multiple = "multiple" in flags
        self.multiple_token = "multiple_token" in flags
        self.children = []
        self.type_name = None
        if self.type in ("oneof", "block"):
            base = pascal(self.name)
            type_name = base
            index = 2
            while type_name in scope_names:
                type_name = f"{base}{index}"
                index += 1
            scope_names.add(type_name)
            self.type_name = type_name
            inner = {type_name}
            self.children = [Arg(child, inner) for child in spec.get("arguments", [])]
        # A block with one argument is that argument.
        self.field = ident(camel(plural(self.name) if self.multiple else self.name))
        self.computed_count_of = None

    @property
    def is_payloadless(self):
        """A choice that carries no value: a token, or a block of tokens only."""
        if self.multiple:
            return False
        if self.type == "pure-token":
            return True
        return self.type == "block" and all(c.type == "pure-token" and not c.optional and not c.multiple for c in self.children)

    @property
    def is_flag(self):
        return self.type == "pure-token" and not self.multiple

    def base_type(self):
        return {
            "key": "RedisKey",
            "string": "RedisArgument",
            "pattern": "RedisArgument",
            "integer": "Int",
            "double": "Double",
            "unix-time": "Int",
        }.get(self.type) or self.type_name or "Bool"

    def swift_type(self):
        if self.is_flag:
            return "Bool"
        base = self.base_type()
        if self.multiple:
            return f"[{base}]"
        if self.optional:
            return f"{base}?"
        return base

    def default(self):
        if self.is_flag:
            return "false"
        if self.multiple and self.optional:
            return "[]"
        if self.optional:
            return "nil"
        return None


def encode_value(arg, expr, out, indent):
    """Appends the Swift that writes one value of `arg`'s base type, `expr`, to `arguments`."""
    pad = " " * indent
    t = arg.type
    if t == "key":
        out.append(f"{pad}arguments.append({expr}.argument)")
    elif t in ("string", "pattern"):
        out.append(f"{pad}arguments.append({expr})")
    elif t in ("integer", "unix-time"):
        out.append(f"{pad}arguments.append(.integer({expr}))")
    elif t == "double":
        out.append(f"{pad}arguments.append(.double({expr}))")
    elif t == "pure-token":
        out.append(f"{pad}arguments.append({swift_string(arg.token)})")
    elif t == "oneof":
        out.append(f"{pad}switch {expr} {{")
        for child, case in zip(arg.children, arg.case_names):
            if child.is_payloadless:
                out.append(f"{pad}case .{case}:")
                if child.type == "pure-token":
                    out.append(f"{pad}    arguments.append({swift_string(child.token)})")
                else:
                    if child.token:
                        out.append(f"{pad}    arguments.append({swift_string(child.token)})")
                    for grandchild in child.children:
                        out.append(f"{pad}    arguments.append({swift_string(grandchild.token)})")
            else:
                out.append(f"{pad}case .{case}(let value):")
                encode_field(child, "value", out, indent + 4, inside_case=True)
        out.append(f"{pad}}}")
    elif t == "block":
        for child in arg.children:
            encode_field(child, f"{expr}.{child.field}", out, indent)
    else:
        raise ValueError(t)


def encode_field(arg, expr, out, indent, inside_case=False):
    """Appends the Swift that writes field `arg` (with its token, optionality and repetition)."""
    pad = " " * indent
    token = arg.token
    if arg.computed_count_of is not None:
        out.append(f"{pad}arguments.append(.integer({arg.computed_count_of}.count))")
        return
    if arg.is_flag:
        if arg.optional and not inside_case:
            out.append(f"{pad}if {expr} {{ arguments.append({swift_string(token)}) }}")
        else:
            out.append(f"{pad}arguments.append({swift_string(token)})")
        return
    if arg.multiple:
        element = "element"
        if arg.multiple_token:
            out.append(f"{pad}for {element} in {expr} {{")
            out.append(f"{pad}    arguments.append({swift_string(token)})")
            encode_value(arg, element, out, indent + 4)
            out.append(f"{pad}}}")
        else:
            if token:
                if arg.optional:
                    out.append(f"{pad}if !{expr}.isEmpty {{ arguments.append({swift_string(token)}) }}")
                else:
                    out.append(f"{pad}arguments.append({swift_string(token)})")
            out.append(f"{pad}for {element} in {expr} {{")
            encode_value(arg, element, out, indent + 4)
            out.append(f"{pad}}}")
        return
    if arg.optional and not inside_case:
        out.append(f"{pad}if let {arg.field.strip('`')}Value = {expr} {{")
        if token:
            out.append(f"{pad}    arguments.append({swift_string(token)})")
        encode_value(arg, f"{arg.field.strip('`')}Value", out, indent + 4)
        out.append(f"{pad}}}")
        return
    if token:
        out.append(f"{pad}arguments.append({swift_string(token)})")
    encode_value(arg, expr, out, indent)


def prepare(args, top_level=True):
    """Names one-of cases, gives siblings distinct field names (a repeated name takes its token's, as
    LCS's `len` and `MINMATCHLEN len`), and marks `numkeys` arguments computed from the keys that follow
    them."""
    used = {"command"}
    for arg in args:
        if arg.field.strip("`") in used:
            base = camel(arg.token) if arg.token else camel(arg.name) + "Argument"
            if arg.multiple:
                base = plural(base)
            candidate = base
            suffix = 2
            while candidate in used:
                candidate = f"{base}{suffix}"
                suffix += 1
            arg.field = ident(candidate)
        used.add(arg.field.strip("`"))
    for index, arg in enumerate(args):
        if top_level and arg.type == "integer" and arg.name == "numkeys" and index + 1 < len(args) and args[index + 1].multiple:
            arg.computed_count_of = f"self.{args[index + 1].field}"
        if arg.type == "oneof":
            names = []
            for child in arg.children:
                base = camel(child.name)
                name = base
                suffix = 2
                while name in names:
                    name = f"{base}{suffix}"
                    suffix += 1
                names.append(name)
            arg.case_names = [ident(n) for n in names]
        prepare(arg.children, top_level=False)


def type_declarations(args, indent, out):
    """Nested Swift types (enums for one-of groups, structs for blocks) for `args`, recursively."""
    pad = " " * indent
    for arg in args:
        if arg.type == "oneof":
            out.append(f"{pad}/// One of the choices of `{arg.name}`.")
            out.append(f"{pad}public enum {arg.type_name}: Sendable, Hashable {{")
            type_declarations([c for c in arg.children if not c.is_payloadless], indent + 4, out)
            for child, case in zip(arg.children, arg.case_names):
                if child.is_payloadless:
                    tokens = [child.token] if child.type == "pure-token" else ([child.token] if child.token else []) + [g.token for g in child.children]
                    out.append(f"{pad}    /// `{' '.join(tokens)}`.")
                    out.append(f"{pad}    case {case}")
                else:
                    label = f"`{child.token}` " if child.token else ""
                    out.append(f"{pad}    /// {label}`{child.name}`.")
                    child_type = f"[{child.base_type()}]" if child.multiple else child.base_type()
                    out.append(f"{pad}    case {case}({child_type})")
            out.append(f"{pad}}}")
            out.append("")
        elif arg.type == "block":
            out.append(f"{pad}/// The `{arg.name}` block.")
            out.append(f"{pad}public struct {arg.type_name}: Sendable, Hashable {{")
            type_declarations(arg.children, indent + 4, out)
            stored = [child for child in arg.children if not (child.type == "pure-token" and not child.optional)]
            for child in stored:
                out.append(f"{pad}    public var {child.field}: {child.swift_type()}")
            params = ", ".join(
                f"{child.field}: {child.swift_type()}" + (f" = {child.default()}" if child.default() else "")
                for child in stored
            )
            out.append("")
            out.append(f"{pad}    public init({params}) {{")
            for child in stored:
                out.append(f"{pad}        self.{child.field} = {child.field}")
            out.append(f"{pad}    }}")
            out.append(f"{pad}}}")
            out.append("")


class Command:
    def __init__(self, full_name, docs, container=None):
        self.full_name = full_name  # "CLIENT SETNAME"
        self.docs = docs
        self.container = container
        parts = full_name.split(" ")
        self.struct_name = parts[-1].replace("-", "_")
        self.path = "RedisCommands." + ".".join(p.replace("-", "_") for p in parts)
        self.method = METHOD_RENAMES.get(full_name) or camel(parts[0]) + "".join(p[:1].upper() + p[1:].lower() for p in re.split(r"[^A-Za-z0-9]+", " ".join(parts[1:])) if p)
        scope = {self.struct_name}
        specs = [dict(spec) for spec in docs.get("arguments", [])]
        for spec in specs:
            override = TYPE_OVERRIDES.get((full_name, spec["name"]))
            if override:
                spec["type"] = override
        # A command whose documentation lists no arguments although its arity needs some (COMMAND
        # GETKEYS, DEBUG): its arguments are taken as they are.
        arity = ARITY.get(full_name, 0)
        if not specs and abs(arity) > len(parts):
            specs = [{"name": "arguments", "type": "string", "flags": ["multiple"]}]
        self.args = [Arg(spec, scope) for spec in specs]
        prepare(self.args)
        # Leading pure tokens that are required and not in a one-of are part of the command, always sent.
        self.response = RESPONSES.get(full_name, "RESPValue")
        self.group = docs.get("group", "generic")

    @property
    def stored(self):
        return [a for a in self.args if not (a.type == "pure-token" and not a.optional and not a.multiple) and a.computed_count_of is None]

    def doc_lines(self, pad):
        lines = []
        summary = doc_text(self.docs.get("summary", ""))
        lines.append(f"{pad}/// `{self.full_name}`: {summary}.".replace("..", "."))
        details = []
        if self.docs.get("complexity"):
            details.append(f"Complexity: {doc_text(self.docs['complexity'])}")
        if self.docs.get("since"):
            details.append(f"Since: Redis {self.docs['since']}.")
        if self.docs.get("deprecated_since"):
            replaced = self.docs.get("replaced_by", "").replace("`", "")
            details.append(f"Deprecated since Redis {self.docs['deprecated_since']}" + (f"; use {doc_text(replaced)} instead." if replaced else "."))
        if details:
            lines.append(f"{pad}///")
            for detail in details:
                lines.append(f"{pad}/// {detail}")
        return lines

    def parameters(self):
        params = []
        for index, arg in enumerate(self.stored):
            label = "_ " if index == 0 and arg.type == "key" and not arg.multiple and not arg.optional else ""
            default = arg.default()
            params.append(f"{label}{arg.field}: {self.qualify(arg.swift_type())}" + (f" = {default}" if default else ""))
        return params

    def qualify(self, swift_type):
        """A nested type's name as seen from outside the command value."""
        for arg in self.args:
            if arg.type_name and re.search(rf"\b{arg.type_name}\b", swift_type):
                swift_type = re.sub(rf"\b{arg.type_name}\b", f"{self.path}.{arg.type_name}", swift_type)
        return swift_type

    def call(self):
        arguments = ", ".join(f"{a.field.strip('`')}: {a.field}" for a in self.stored)
        return f"{self.path}({arguments})"

    def declaration(self):
        out = []
        out += self.doc_lines("    ")
        out.append(f"    public struct {self.struct_name}: RedisTypedCommand {{")
        out.append(f"        public typealias Response = {self.response}")
        out.append(f"        public static let name = {swift_string(self.full_name)}")
        out.append("")
        type_declarations(self.args, 8, out)
        for arg in self.stored:
            out.append(f"        public var {arg.field}: {arg.swift_type()}")
        params = ", ".join(
            f"{a.field}: {a.swift_type()}" + (f" = {a.default()}" if a.default() else "") for a in self.stored
        )
        if self.stored:
            out.append("")
        out.append(f"        public init({params}) {{")
        for arg in self.stored:
            out.append(f"            self.{arg.field} = {arg.field}")
        out.append("        }")
        out.append("")
        out.append("        public var command: RedisCommand {")
        parts = self.full_name.split(" ")
        if len(self.args) == 0:
            rest = ", ".join(swift_string(p) for p in parts[1:])
            out.append(f"            RedisCommand({swift_string(parts[0])}{', ' + rest if rest else ''})")
        else:
            out.append("            var arguments: [RedisArgument] = []")
            for p in parts[1:]:
                out.append(f"            arguments.append({swift_string(p)})")
            for arg in self.args:
                encode_field(arg, f"self.{arg.field}", out, 12)
            out.append(f"            return RedisCommand({swift_string(parts[0])}, arguments: arguments)")
        out.append("        }")
        out.append("    }")
        return out

    def executor_method(self, indent="    "):
        out = self.doc_lines(indent)
        out.append(f"{indent}@discardableResult")
        params = ", ".join(self.parameters())
        out.append(f"{indent}public func {ident(self.method)}({params}) async throws -> {self.qualify_response()} {{")
        out.append(f"{indent}    try await self.execute({self.call()})")
        out.append(f"{indent}}}")
        return out

    def queue_method(self, indent="    "):
        out = self.doc_lines(indent)
        out.append(f"{indent}@discardableResult")
        params = ", ".join(self.parameters())
        out.append(f"{indent}public mutating func {ident(self.method)}({params}) -> RedisQueued<{self.qualify_response()}> {{")
        out.append(f"{indent}    self.queue({self.call()})")
        out.append(f"{indent}}}")
        return out

    def qualify_response(self):
        return self.response


def commands():
    result = []
    for name, docs in sorted(DOCS.items()):
        upper = name.upper()
        if upper in ELSEWHERE:
            continue
        subcommands = docs.get("subcommands")
        if subcommands:
            for sub_name, sub_docs in sorted(subcommands.items()):
                result.append(Command(sub_name.upper().replace("|", " "), sub_docs, container=upper))
        else:
            result.append(Command(upper, docs))
    return result


def main():
    items = commands()
    containers = sorted({c.container for c in items if c.container})
    by_file = {}
    for command in items:
        by_file.setdefault(GROUP_FILES.get(command.group, "Generic"), []).append(command)
    header = [
        f"// Generated by scripts/command-spec/generate_api.py from spec/redis-{SERIES}-command-docs.json",
        f"// (redis-server {VERSION}). Do not edit; run scripts/command-spec/generate.py.",
        "",
        "public import NIOCore",
        "",
    ]
    written = []
    for stale in OUT.glob("RedisCommands+*.swift"):
        stale.unlink()
    for file_name, group in sorted(by_file.items()):
        lines = list(header)
        for command in group:
            scope = f"RedisCommands.{command.container.replace('-', '_')}" if command.container else "RedisCommands"
            lines.append(f"extension {scope} {{")
            lines += command.declaration()
            lines.append("}")
            lines.append("")
        executor = [c for c in group if c.full_name not in SESSION and c.full_name not in HANDWRITTEN]
        session = [c for c in group if c.full_name in SESSION and c.full_name not in HANDWRITTEN]
        queued = [c for c in group if c.full_name not in SESSION]
        if executor:
            lines.append("extension RedisCommandExecutor {")
            for command in executor:
                lines += command.executor_method()
                lines.append("")
            lines[-1] = "}"
            lines.append("")
        if session:
            lines.append("// Commands that change the connection's session: on a single or lent connection only.")
            lines.append("extension RedisConnection {")
            for command in session:
                lines += command.executor_method()
                lines.append("")
            lines[-1] = "}"
            lines.append("")
        if queued:
            lines.append("extension RedisCommandQueue {")
            for command in queued:
                lines += command.queue_method()
                lines.append("")
            lines[-1] = "}"
            lines.append("")
        path = OUT / f"RedisCommands+{file_name}.swift"
        text = "\n".join(lines)
        if "ByteBuffer" not in text:
            text = text.replace("public import NIOCore\n\n", "")
        path.write_text(text)
        written.append(path)
    # The namespace, the container enums and the list of every generated command.
    lines = list(header[:3])  # the namespace needs no import
    lines.append("/// Every command of the pinned server's specification as a typed value: `RedisCommands.GET(key:)`,")
    lines.append("/// `RedisCommands.CLIENT.SETNAME(connectionName:)`. Send one with")
    lines.append("/// ``RedisCommandExecutor/execute(_:timeout:)`` or queue it in a pipeline or transaction; every")
    lines.append("/// command also has a method on the executors (`client.hincrby(\"h\", field: \"f\", increment: 1)`).")
    lines.append("public enum RedisCommands {")
    for container in containers:
        lines.append(f"    /// The `{container}` subcommands.")
        lines.append(f"    public enum {container.replace('-', '_')} {{}}")
    lines.append("")
    lines.append("    /// The name of every command and subcommand with a generated value (upper case, `CLIENT SETNAME`).")
    lines.append("    public static let generatedNames: [String] = [")
    for command in items:
        lines.append(f"        {swift_string(command.full_name)},")
    lines.append("    ]")
    lines.append("")
    lines.append("    /// Generated commands whose methods are on ``RedisConnection`` only, not on the pooled client or in")
    lines.append("    /// pipelines and transactions: they change the connection's session beyond themselves.")
    lines.append("    public static let connectionOnlyNames: Set<String> = [")
    for name in sorted(n for n in SESSION if n in {c.full_name for c in items}):
        lines.append(f"        {swift_string(name)},")
    lines.append("    ]")
    lines.append("")
    lines.append("    /// Commands of the specification offered elsewhere than as a generated value, and where.")
    lines.append("    public static let offeredElsewhere: [String: String] = [")
    for name, where in sorted(ELSEWHERE.items()):
        lines.append(f"        {swift_string(name)}: {swift_string(where)},")
    lines.append("    ]")
    lines.append("}")
    lines.append("")
    (OUT / "RedisCommands.swift").write_text("\n".join(lines))
    print(f"{OUT.relative_to(ROOT)}: {len(items)} typed commands in {len(written)} files")


if __name__ == "__main__":
    main()
