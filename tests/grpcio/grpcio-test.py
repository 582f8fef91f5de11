#!/usr/bin/env python3
"""A roomy-agent as gRPC C-core clients (Python/Ruby/C++/PHP grpcio) see it.

Checks, over one target (a unix socket by default, with the channel's own
:authority unless --authority is given):
  health Check -> SERVING; reflection v1alpha and v1 list roomy.v1.Agent;
  Inspect of a sim container (messages built from the descriptors that
  reflection served, so no generated stubs); a shrink and an unknown
  container are refused with INVALID_ARGUMENT / NOT_FOUND and Roomy's text.

Prints one PASS/FAIL line per check, then "N passed, N failed"; exits 1 on
any failure. Needs grpcio, grpcio-reflection, grpcio-health-checking.
"""
import argparse
import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as refl
from grpc_reflection.v1alpha import reflection_pb2_grpc as refl_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

p = argparse.ArgumentParser()
p.add_argument("--target", default="unix:///run/roomy/agent.sock")
p.add_argument("--authority", help="force :authority (grpc.default_authority)")
p.add_argument("--label", default="")
p.add_argument("--container", default="c0", help="a sim container (c0..c9)")
p.add_argument("--tls-ca")
p.add_argument("--tls-cert")
p.add_argument("--tls-key")
p.add_argument("--server-name", help="grpc.ssl_target_name_override")
p.add_argument("--timeout", type=float, default=5.0)
p.add_argument(
    "--controller-host",
    help="talk to a roomy-controller instead, about this host's containers (HOST/CONTAINER)",
)
a = p.parse_args()
# The service under test and how its calls name a container.
SERVICE = "roomy.v1.Controller" if a.controller_host else "roomy.v1.Agent"
ref = (lambda c: f"{a.controller_host}/{c}") if a.controller_host else (lambda c: c)

opts = []
if a.authority:
    opts.append(("grpc.default_authority", a.authority))
if a.tls_ca:
    rd = lambda f: open(f, "rb").read() if f else None
    creds = grpc.ssl_channel_credentials(rd(a.tls_ca), rd(a.tls_key), rd(a.tls_cert))
    if a.server_name:
        opts.append(("grpc.ssl_target_name_override", a.server_name))
    ch = grpc.secure_channel(a.target, creds, options=opts)
else:
    ch = grpc.insecure_channel(a.target, options=opts)

label = a.label or a.target + (f" authority={a.authority}" if a.authority else "")
passed = failed = 0


def check(name, fn):
    """fn returns None on success or a string saying what was wrong."""
    global passed, failed
    try:
        why = fn()
    except grpc.RpcError as e:
        why = f"{e.code()}: {e.details()}"
    except Exception as e:  # a wrong answer shape, a missing descriptor
        why = f"{type(e).__name__}: {e}"
    if why is None:
        passed += 1
        print(f"PASS [{label}] {name}")
    else:
        failed += 1
        print(f"FAIL [{label}] {name}: {why}")


def health():
    r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=a.timeout)
    if r.status != health_pb2.HealthCheckResponse.SERVING:
        return f"status {r.status}"


def list_services(method):
    out = list(reflection_call(method)(iter([refl.ServerReflectionRequest(list_services="")]), timeout=a.timeout))
    if len(out) != 1 or not out[0].HasField("list_services_response"):
        return f"unexpected answer {out!r}"[:300]
    names = [s.name for s in out[0].list_services_response.service]
    if SERVICE not in names:
        return f"{SERVICE} not in {names}"


def reflection_call(method):
    # v1 and v1alpha messages are the same on the wire; only the path differs.
    return ch.stream_stream(
        f"/grpc.reflection.{method}.ServerReflection/ServerReflectionInfo",
        request_serializer=refl.ServerReflectionRequest.SerializeToString,
        response_deserializer=refl.ServerReflectionResponse.FromString,
    )


def pool_v1alpha():
    # grpcio-reflection's own client (v1alpha only), as grpc_cli and evans use it.
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(ch))
    pool.FindServiceByName(SERVICE)
    return pool


def pool_v1():
    req = refl.ServerReflectionRequest(file_containing_symbol=SERVICE)
    (r,) = list(reflection_call("v1")(iter([req]), timeout=a.timeout))
    if not r.HasField("file_descriptor_response"):
        raise RuntimeError(f"no file_descriptor_response: {str(r)[:200]}")
    pool = descriptor_pool.DescriptorPool()
    fds = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in r.file_descriptor_response.file_descriptor_proto]
    pending = fds
    while pending:  # dependencies first, in whatever order they came
        left = []
        for fd in pending:
            try:
                pool.Add(fd)
            except TypeError:
                left.append(fd)
        if len(left) == len(pending):
            raise RuntimeError(f"cannot load {[f.name for f in left]}")
        pending = left
    pool.FindServiceByName(SERVICE)
    return pool


def stub_stack(pool):
    svc = pool.FindServiceByName(SERVICE)
    msg = lambda n: message_factory.GetMessageClass(pool.FindMessageTypeByName(n))

    def unary(method):
        m = svc.FindMethodByName(method)
        req, resp = msg(m.input_type.full_name), msg(m.output_type.full_name)
        call = ch.unary_unary(
            f"/{svc.full_name}/{method}",
            request_serializer=req.SerializeToString,
            response_deserializer=resp.FromString,
        )
        return req, call

    return unary


state = {}


def descriptors(version, make):
    def run():
        pool = make()
        state.setdefault("unary", stub_stack(pool))

    return run


def storage():
    """The container's storage, as the agent or the controller reports it."""
    if a.controller_host:
        req, call = state["unary"]("InspectContainer")
        return [call(req(target=ref(a.container)), timeout=a.timeout).container]
    req, call = state["unary"]("Inspect")
    return list(call(req(container=a.container), timeout=a.timeout).containers)


def inspect():
    found = storage()
    names = [c.name for c in found]
    if names != [a.container]:
        return f"containers {names}"
    if found[0].table_size_bytes <= 0:
        return f"table_size_bytes {found[0].table_size_bytes}"
    state["size"] = found[0].table_size_bytes


def unchanged():
    size = storage()[0].table_size_bytes
    if size != state.get("size"):
        return f"table_size_bytes {state.get('size')} -> {size}"


def refused(container, size, code, text):
    def run():
        req, call = state["unary"]("Resize")
        try:
            if a.controller_host:
                r = call(req(target=ref(container), size=size), timeout=a.timeout)
            else:
                r = call(req(container=container, size=size), timeout=a.timeout)
        except grpc.RpcError as e:
            if e.code() != code:
                return f"got {e.code()}: {e.details()}, want {code}"
            if text not in (e.details() or ""):
                return f"message {e.details()!r} lacks {text!r}"
            return None
        return f"accepted: {str(r)[:200]}"

    return run


check("health Check: SERVING", health)
check(f"reflection v1alpha lists {SERVICE}", lambda: list_services("v1alpha"))
check(f"reflection v1 lists {SERVICE}", lambda: list_services("v1"))
check(f"descriptors of {SERVICE} via reflection v1", descriptors("v1", pool_v1))
check(f"descriptors of {SERVICE} via grpcio-reflection's client (v1alpha)", descriptors("v1alpha", pool_v1alpha))
if "unary" in state:
    check(f"Inspect {ref(a.container)}", inspect)
    check(
        f"Resize {a.container} 1G (a shrink) refused: INVALID_ARGUMENT",
        refused(a.container, "1G", grpc.StatusCode.INVALID_ARGUMENT, "Roomy only grows"),
    )
    check(
        "Resize of an unknown container refused: NOT_FOUND",
        refused("no-such-container", "+1G", grpc.StatusCode.NOT_FOUND, 'no container "no-such-container"'),
    )
    check(f"the refused resizes left {a.container}'s size as it was", unchanged)
else:
    for n in ("Inspect", "Resize shrink refused", "Resize unknown refused", "nothing changed"):
        failed += 1
        print(f"FAIL [{label}] {n}: no descriptors from reflection")
ch.close()
print(f"grpcio: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
