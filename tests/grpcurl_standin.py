"""A stand-in for the grpcurl binary: the subset the README uses, schema from reflection only.

grpcurl is not installable everywhere the tests run, so tests/test_readme_grpcurl.py
puts this on PATH as ``grpcurl`` and runs the README's commands unchanged. Like
grpcurl it learns every service and message type from the server's reflection
service (never from the generated modules: that is what it proves), parses ``-d``
with the proto3 JSON mapping (unknown fields are an error) and prints responses as
indented camelCase JSON without default values.

Supported: flags ``-plaintext``, ``-cacert FILE``, ``-d JSON`` (``-d @`` reads stdin),
``-H 'name: value'`` (repeatable, sent on reflection requests too), ``-max-time SECS``,
``-connect-timeout SECS``, ``-emit-defaults``, ``-allow-unknown-fields``; verbs
``list [service]``, ``describe [symbol]`` and ``ADDRESS service/method`` for unary
and server-streaming methods. grpcurl's conventions are kept: usage errors exit 2,
other failures 1, an RPC ending with a non-OK status prints ``ERROR:`` / ``Code:`` /
``Message:`` (and ``Details:``) to stderr and exits 64 + the status code; when
``-max-time`` ends a stream that is DeadlineExceeded, exit 68, as grpcurl does.

Known differences: ``describe`` prints no comments (the server's descriptors carry
none) and covers services, methods, messages and enums; ``-insecure``, client
certificates, ``-format text``, ``-v`` and client streaming are not implemented and
fail with exit 2 saying so; the deadline also bounds the connection and the call but
not the reflection requests. ``localhost:50051`` (the README's address) is replaced by
``$GRPCURL_STANDIN_TARGET`` when that is set.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

# gRPC core logs informational lines (a failed TLS handshake, say) on stderr; grpc-go,
# which grpcurl is built on, logs only errors by default.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc
from google.protobuf import descriptor, descriptor_pool, json_format, message_factory
from google.protobuf.any_pb2 import Any as AnyMessage
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

PROG = "grpcurl"
README_ADDRESS = "localhost:50051"
TARGET_ENV = "GRPCURL_STANDIN_TARGET"
# grpcurl: "To avoid confusion between program error codes and the gRPC response
# status codes 'Cancelled' and 'Unknown' ... the response status codes emitted use an
# offset of 64".
STATUS_CODE_OFFSET = 64
DEFAULT_DIAL_SECONDS = 10.0
BOOL_FLAGS = {"plaintext", "emit-defaults", "allow-unknown-fields"}
VALUE_FLAGS = {"d", "H", "max-time", "connect-timeout", "cacert"}
# Real grpcurl flags this stand-in does not implement: refused rather than ignored.
UNSUPPORTED_FLAGS = {
    "insecure", "cert", "key", "format", "v", "vv", "protoset", "proto", "import-path",
    "rpc-header", "reflect-header", "expand-headers", "authority", "servername",
    "keepalive-time", "max-msg-sz", "protoset-out", "msg-template", "use-reflection",
    "format-error", "unix", "user-agent", "alts", "help", "version",
}
# Go's codes.Code.String(), which grpcurl prints.
GO_CODE_NAMES = {
    grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown", grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound", grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted", grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented", grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable", grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}


class Failure(Exception):
    """Ends the program: ``usage`` ones exit 2 with a hint, others exit 1 (grpcurl's fail)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass
class Options:
    plaintext: bool = False
    emit_defaults: bool = False
    allow_unknown_fields: bool = False
    data: str = ""
    headers: list[str] = field(default_factory=list)
    max_time: float = 0.0
    connect_timeout: float = 0.0
    cacert: str = ""


def parse_flags(argv: Sequence[str]) -> tuple[Options, list[str]]:
    """Go ``flag`` rules: ``-name``/``--name``, ``=value`` or the next argument, stop at
    the first non-flag."""
    opts = Options()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, has_value, value = arg.lstrip("-").partition("=")
        i += 1
        if name in UNSUPPORTED_FLAGS:
            raise Failure(f"The -{name} flag is not implemented by this grpcurl stand-in.",
                          usage=True)
        if name in BOOL_FLAGS:
            on = value.lower() in ("1", "t", "true") if has_value else True
            setattr(opts, name.replace("-", "_"), on)
            continue
        if name not in VALUE_FLAGS:
            raise Failure(f"flag provided but not defined: -{name}", usage=True)
        if not has_value:
            if i >= len(argv):
                raise Failure(f"flag needs an argument: -{name}", usage=True)
            value = argv[i]
            i += 1
        if name == "d":
            opts.data = value
        elif name == "H":
            opts.headers.append(value)
        elif name == "cacert":
            opts.cacert = value
        else:
            try:
                seconds = float(value)
            except ValueError:
                raise Failure(f'invalid value "{value}" for flag -{name}', usage=True) from None
            if seconds < 0:
                raise Failure(f"The -{name} argument must not be negative.", usage=True)
            setattr(opts, name.replace("-", "_"), seconds)
    return opts, list(argv[i:])


def metadata_from_headers(headers: Sequence[str]) -> list[tuple[str, str | bytes]]:
    """grpcurl's ``name: value`` rule: split at the first colon, trim, lower-case the name;
    ``-bin`` values are base64 when they decode."""
    md: list[tuple[str, str | bytes]] = []
    for header in headers:
        name, _, value = header.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name.endswith("-bin"):
            try:
                md.append((name, base64.b64decode(value, validate=True)))
            except ValueError:
                md.append((name, value.encode()))
        else:
            md.append((name, value))
    return md


# grpc ships no type hints: its base classes are Any to mypy.
class _Headers(grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
               grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
               grpc.StreamStreamClientInterceptor):  # type: ignore[misc]
    """Adds the ``-H`` metadata to every call, reflection included (as grpcurl does)."""

    def __init__(self, metadata: list[tuple[str, str | bytes]]) -> None:
        self._metadata = metadata

    def _details(self, details: Any) -> Any:
        merged = [*(details.metadata or ()), *self._metadata]
        return details._replace(metadata=merged)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_stream(self, continuation: Any, details: Any,
                                requests: Any) -> Any:
        return continuation(self._details(details), requests)


class Deadline:
    """``-max-time``: one deadline for the whole operation (0: none)."""

    def __init__(self, seconds: float) -> None:
        self._at = time.monotonic() + seconds if seconds > 0 else None

    def remaining(self) -> float | None:
        return None if self._at is None else max(0.0, self._at - time.monotonic())

    def passed(self) -> bool:
        return self._at is not None and time.monotonic() >= self._at


def dial(address: str, opts: Options, deadline: Deadline) -> grpc.Channel:
    target = os.environ.get(TARGET_ENV) if address == README_ADDRESS else None
    target = target or address
    if opts.plaintext:
        channel = grpc.insecure_channel(target)
    else:
        roots = None
        if opts.cacert:
            try:
                with open(opts.cacert, "rb") as f:
                    roots = f.read()
            except OSError as exc:
                raise Failure(f"Failed to create TLS config: {exc.strerror}") from None
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(roots))
    wait = opts.connect_timeout or DEFAULT_DIAL_SECONDS
    remaining = deadline.remaining()
    if remaining is not None:
        wait = min(wait, remaining)
    try:
        grpc.channel_ready_future(channel).result(timeout=wait)
    except grpc.FutureTimeoutError:
        channel.close()
        raise Failure(f'Failed to dial target host "{address}": context deadline exceeded'
                      ) from None
    headers = metadata_from_headers(opts.headers)
    return grpc.intercept_channel(channel, _Headers(headers)) if headers else channel


# ----------------------------------------------------------------------------- reflection


class Schema:
    """Descriptors fetched from the server's reflection service into a private pool."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._db = ProtoReflectionDescriptorDatabase(channel)
        self.pool = descriptor_pool.DescriptorPool(self._db)

    def services(self) -> list[str]:
        return sorted(self._db.get_services())

    def find(self, symbol: str) -> Any:
        symbol = symbol.removeprefix(".")
        try:
            self.pool.FindFileContainingSymbol(symbol)
        except KeyError:
            # Python's reflection server does not index methods: look in the service.
            parent, _, name = symbol.rpartition(".")
            try:
                return self.pool.FindServiceByName(parent).methods_by_name[name]
            except KeyError:
                raise Failure(f"Symbol not found: {symbol}") from None
        lookups: list[Callable[[str], Any]] = [
            self.pool.FindServiceByName, self.pool.FindMessageTypeByName,
            self.pool.FindEnumTypeByName, self.pool.FindMethodByName,
        ]
        for lookup in lookups:
            try:
                return lookup(symbol)
            except KeyError:
                continue
        raise Failure(f"Symbol not found: {symbol}")

    def message_class(self, desc: descriptor.Descriptor) -> Any:
        return message_factory.GetMessageClass(desc)


# ------------------------------------------------------------------------------ describe

_SCALARS = {
    descriptor.FieldDescriptor.TYPE_DOUBLE: "double",
    descriptor.FieldDescriptor.TYPE_FLOAT: "float",
    descriptor.FieldDescriptor.TYPE_INT64: "int64",
    descriptor.FieldDescriptor.TYPE_UINT64: "uint64",
    descriptor.FieldDescriptor.TYPE_INT32: "int32",
    descriptor.FieldDescriptor.TYPE_FIXED64: "fixed64",
    descriptor.FieldDescriptor.TYPE_FIXED32: "fixed32",
    descriptor.FieldDescriptor.TYPE_BOOL: "bool",
    descriptor.FieldDescriptor.TYPE_STRING: "string",
    descriptor.FieldDescriptor.TYPE_BYTES: "bytes",
    descriptor.FieldDescriptor.TYPE_UINT32: "uint32",
    descriptor.FieldDescriptor.TYPE_SFIXED32: "sfixed32",
    descriptor.FieldDescriptor.TYPE_SFIXED64: "sfixed64",
    descriptor.FieldDescriptor.TYPE_SINT32: "sint32",
    descriptor.FieldDescriptor.TYPE_SINT64: "sint64",
}


def _type_name(f: descriptor.FieldDescriptor) -> str:
    if f.message_type is not None:
        return "." + f.message_type.full_name
    if f.enum_type is not None:
        return "." + f.enum_type.full_name
    return _SCALARS[f.type]


def _field_line(f: descriptor.FieldDescriptor) -> str:
    msg = f.message_type
    if msg is not None and msg.GetOptions().map_entry:
        key, value = msg.fields_by_name["key"], msg.fields_by_name["value"]
        return f"map<{_type_name(key)}, {_type_name(value)}> {f.name} = {f.number};"
    label = ""
    if f.is_repeated:
        label = "repeated "
    elif f.has_presence and f.containing_oneof is not None and \
            f.containing_oneof.name.startswith("_"):
        label = "optional "  # a proto3 optional field (its synthetic oneof is not printed)
    return f"{label}{_type_name(f)} {f.name} = {f.number};"


def _method_line(m: descriptor.MethodDescriptor) -> str:
    cs = "stream " if m.client_streaming else ""
    ss = "stream " if m.server_streaming else ""
    return (f"rpc {m.name} ( {cs}.{m.input_type.full_name} ) "
            f"returns ( {ss}.{m.output_type.full_name} );")


def _indent(lines: list[str]) -> list[str]:
    return ["  " + line for line in lines]


def _describe_lines(d: Any) -> list[str]:
    """Roughly protoprint's compact form with sorted elements and qualified names,
    which grpcurl's ``describe`` prints."""
    if isinstance(d, descriptor.ServiceDescriptor):
        methods = sorted(d.methods, key=lambda m: m.name)
        return [f"service {d.name} {{", *_indent([_method_line(m) for m in methods]), "}"]
    if isinstance(d, descriptor.MethodDescriptor):
        return [_method_line(d)]
    if isinstance(d, descriptor.EnumDescriptor):
        values = sorted(d.values, key=lambda v: v.number)
        return [f"enum {d.name} {{", *_indent([f"{v.name} = {v.number};" for v in values]),
                "}"]
    body: list[str] = []
    done_oneofs: set[str] = set()
    for f in sorted(d.fields, key=lambda f: f.number):
        oneof = f.containing_oneof
        if oneof is not None and not oneof.name.startswith("_"):
            if oneof.name in done_oneofs:
                continue
            done_oneofs.add(oneof.name)
            members = sorted(oneof.fields, key=lambda f: f.number)
            body += [f"oneof {oneof.name} {{", *_indent([_field_line(m) for m in members]),
                     "}"]
            continue
        body.append(_field_line(f))
    for nested in sorted(d.nested_types, key=lambda n: n.name):
        if not nested.GetOptions().map_entry:
            body += _describe_lines(nested)
    for enum in sorted(d.enum_types, key=lambda e: e.name):
        body += _describe_lines(enum)
    return [f"message {d.name} {{", *_indent(body), "}"]


def _kind(d: Any) -> str:
    if isinstance(d, descriptor.ServiceDescriptor):
        return "a service"
    if isinstance(d, descriptor.MethodDescriptor):
        return "a method"
    if isinstance(d, descriptor.EnumDescriptor):
        return "an enum"
    return "a message"


def describe(schema: Schema, symbol: str, out: Callable[[str], None]) -> None:
    symbols = [symbol] if symbol else schema.services()
    if not symbols:
        out("Server returned an empty list of exposed services")
    for name in symbols:
        try:
            d = schema.find(name)
        except Failure as exc:
            raise Failure(f'Failed to resolve symbol "{name.removeprefix(".")}": {exc}'
                          ) from None
        out(f"{d.full_name} is {_kind(d)}:")
        out("\n".join(_describe_lines(d)))


def list_symbols(schema: Schema, service: str, out: Callable[[str], None]) -> None:
    if not service:
        names = schema.services()
        for name in names or ["(No services)"]:
            out(name)
        return
    try:
        svc = schema.pool.FindServiceByName(service)
    except KeyError:
        raise Failure(f'Failed to list methods for service "{service}": '
                      f"Service not found: {service}") from None
    for method in sorted(m.full_name for m in svc.methods) or ["(No methods)"]:
        out(method)


# -------------------------------------------------------------------------------- invoke


def _json_values(data: str) -> Iterator[Any]:
    """The concatenated JSON values of ``-d`` (grpcurl reads a stream of messages)."""
    decoder = json.JSONDecoder()
    pos = 0
    while True:
        while pos < len(data) and data[pos].isspace():
            pos += 1
        if pos >= len(data):
            return
        value, pos = decoder.raw_decode(data, pos)
        yield value


def to_json(msg: Any, pool: descriptor_pool.DescriptorPool, emit_defaults: bool) -> str:
    return json_format.MessageToJson(
        msg, indent=2, descriptor_pool=pool, ensure_ascii=False,
        always_print_fields_with_no_presence=emit_defaults)


def _detail_json(detail: AnyMessage, pool: descriptor_pool.DescriptorPool) -> str:
    # grpcurl resolves a detail through reflection, then the types compiled into it,
    # else prints the raw bytes; googleapis' google.rpc types stand in for the latter.
    from google.rpc import error_details_pb2  # noqa: F401  (registers google.rpc types)

    for candidate in (pool, descriptor_pool.Default()):
        try:
            return json_format.MessageToJson(detail, indent=2, descriptor_pool=candidate,
                                             ensure_ascii=False)
        except (TypeError, KeyError, json_format.Error):
            continue
    name = detail.type_url.rpartition("/")[2]
    return json.dumps({"@type": detail.type_url,
                       "@error": f"{name} is not recognized; see @value for raw binary "
                                 f"message data",
                       "@value": base64.b64encode(detail.value).decode()}, indent=2)


def print_status(err: grpc.RpcError, pool: descriptor_pool.DescriptorPool,
                 deadline: Deadline) -> int:
    """grpcurl's PrintStatus on stderr; returns the exit code (64 + status code)."""
    code = err.code()
    message = err.details() or ""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and deadline.passed():
        message = "context deadline exceeded"  # grpc-go's words when -max-time ends a call
    lines = ["ERROR:", f"  Code: {GO_CODE_NAMES.get(code, str(code))}", f"  Message: {message}"]
    details = _status_details(err)
    if details:
        lines.append("  Details:")
        for i, detail in enumerate(details, start=1):
            prefix = f"  {i})"
            pad = " " * len(prefix) + "\t"
            text = _detail_json(detail, pool).split("\n")
            lines.append(f"{prefix}\t{text[0]}")
            lines += [pad + line for line in text[1:]]
    sys.stderr.write("\n".join(lines) + "\n")
    return STATUS_CODE_OFFSET + int(code.value[0])


def _status_details(err: grpc.RpcError) -> list[AnyMessage]:
    from google.rpc import status_pb2

    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return list(status_pb2.Status.FromString(value).details)
    return []


def invoke(channel: grpc.Channel, schema: Schema, symbol: str, opts: Options,
           deadline: Deadline, out: Callable[[str], None]) -> int:
    where = f'Error invoking method "{symbol}"'
    cut = symbol.rfind("/")
    if cut < 0:
        cut = symbol.rfind(".")
    service, method_name = (symbol[:cut], symbol[cut + 1:]) if cut >= 0 else ("", "")
    if not service or not method_name:
        raise Failure(f"{where}: given method name \"{symbol}\" is not in expected format: "
                      "'service/method' or 'service.method'")
    try:
        svc = schema.find(service)
    except Failure:
        raise Failure(f'{where}: target server does not expose service "{service}"') from None
    if not isinstance(svc, descriptor.ServiceDescriptor):
        raise Failure(f'{where}: target server does not expose service "{service}"')
    method = svc.methods_by_name.get(method_name)
    if method is None:
        raise Failure(f'{where}: service "{service}" does not include a method named '
                      f'"{method_name}"')
    if method.client_streaming:
        raise Failure(f"{where}: client streaming is not implemented by this grpcurl "
                      "stand-in", usage=True)
    request_cls = schema.message_class(method.input_type)
    response_cls = schema.message_class(method.output_type)
    data = sys.stdin.read() if opts.data == "@" else opts.data
    try:
        values = list(_json_values(data))
        request = request_cls()
        if values:
            json_format.ParseDict(values[0], request,
                                  ignore_unknown_fields=opts.allow_unknown_fields,
                                  descriptor_pool=schema.pool)
    except (ValueError, json_format.ParseError) as exc:
        raise Failure(f"{where}: error getting request data: {exc}") from None
    if len(values) > 1:
        raise Failure(f'{where}: method "{method.full_name}" is a '
                      f"{'server-streaming' if method.server_streaming else 'unary'} RPC, "
                      "but request data contained more than 1 message")
    path = f"/{svc.full_name}/{method.name}"
    kwargs = {"request_serializer": lambda m: m.SerializeToString(),
              "response_deserializer": response_cls.FromString}
    try:
        if method.server_streaming:
            stream = channel.unary_stream(path, **kwargs)(request, timeout=deadline.remaining())
            for response in stream:
                out(to_json(response, schema.pool, opts.emit_defaults))
        else:
            response = channel.unary_unary(path, **kwargs)(request,
                                                           timeout=deadline.remaining())
            out(to_json(response, schema.pool, opts.emit_defaults))
    except grpc.RpcError as err:
        return print_status(err, schema.pool, deadline)
    return 0


# ---------------------------------------------------------------------------------- main


def _fail(exc: Failure) -> NoReturn:
    sys.stderr.write(f"{exc}\n")
    if exc.usage:
        sys.stderr.write(f"Try '{PROG} -help' for more details.\n")
        raise SystemExit(2)
    raise SystemExit(1)


def run(argv: Sequence[str]) -> int:
    def out(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    opts, args = parse_flags(argv)
    if not args:
        raise Failure("Too few arguments.", usage=True)
    address = ""
    if args[0] not in ("list", "describe"):
        address, args = args[0], args[1:]
    if not args:
        raise Failure("Too few arguments.", usage=True)
    verb = args[0] if args[0] in ("list", "describe") else "invoke"
    if verb != "invoke":
        args = args[1:]
    symbol = args[0] if args else ""
    if verb == "invoke" and not symbol:
        raise Failure("Too few arguments.", usage=True)
    if len(args) > 1:
        raise Failure("Too many arguments.", usage=True)
    if not address:
        raise Failure("No host:port specified (this stand-in reads schemas only by "
                      "reflection).", usage=True)
    deadline = Deadline(opts.max_time)
    channel = dial(address, opts, deadline)
    try:
        schema = Schema(channel)
        try:
            if verb == "list":
                list_symbols(schema, symbol, out)
            elif verb == "describe":
                describe(schema, symbol, out)
            else:
                return invoke(channel, schema, symbol, opts, deadline, out)
        except grpc.RpcError as err:
            # A failing reflection request (e.g. refused without the API token).
            what = "list services" if verb == "list" else "resolve symbols"
            code = err.code()
            raise Failure(f"Failed to {what}: rpc error: code = "
                          f"{GO_CODE_NAMES.get(code, code)} desc = {err.details()}"
                          ) from None
        return 0
    finally:
        channel.close()


def main() -> None:
    try:
        code = run(sys.argv[1:])
    except Failure as exc:
        _fail(exc)
    # Proof that the schema came from reflection: the project's generated code was
    # never needed (nor imported).
    leaked = sorted(m for m in sys.modules if m.startswith("integration_sidecar"))
    if leaked:
        sys.stderr.write(f"grpcurl stand-in: generated modules were imported: {leaked}\n")
        raise SystemExit(1)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
