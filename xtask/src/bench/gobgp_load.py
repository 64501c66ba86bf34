"""GoBGP baseline for `cargo xtask bench bgp`: load N prefixes x K next hops
into gobgpd's global RIB over its gRPC API (AddPathStream, one ADD-PATH
identifier per next hop), then add the peer. Prints "peer-added" when
AddPeer returns, so the caller can start its clock there.

Usage: gobgp_load.py STUB_DIR API_ADDR PEER_IP PEER_AS PREFIXES NEXT_HOPS
"""
import ipaddress
import sys
import time

stub_dir, api_addr, peer_ip, peer_as, prefixes, next_hops = sys.argv[1:7]
sys.path.insert(0, stub_dir)

import grpc  # noqa: E402
from google.protobuf.any_pb2 import Any  # noqa: E402

import attribute_pb2 as attr  # noqa: E402
import gobgp_pb2 as api  # noqa: E402
import gobgp_pb2_grpc as rpc  # noqa: E402


def packed(message):
    value = Any()
    value.Pack(message)
    return value


channel = grpc.insecure_channel(api_addr)
grpc.channel_ready_future(channel).result(timeout=20)
stub = rpc.GobgpApiStub(channel)

family = api.Family(afi=api.Family.AFI_IP, safi=api.Family.SAFI_UNICAST)
origin = packed(attr.OriginAttribute(origin=0))
hops = [packed(attr.NextHopAttribute(next_hop=f"172.30.0.{11 + k}")) for k in range(int(next_hops))]


def requests(batch=1000):
    paths = []
    for index in range(int(prefixes)):
        prefix = str(ipaddress.IPv4Address(0x0A000000 + index))
        nlri = packed(attr.IPAddressPrefix(prefix_len=32, prefix=prefix))
        for k, hop in enumerate(hops):
            paths.append(api.Path(nlri=nlri, pattrs=[origin, hop], family=family, identifier=k + 1))
            if len(paths) == batch:
                yield api.AddPathStreamRequest(table_type=api.GLOBAL, paths=paths)
                paths = []
    if paths:
        yield api.AddPathStreamRequest(table_type=api.GLOBAL, paths=paths)


started = time.monotonic()
stub.AddPathStream(requests())
print(f"loaded {time.monotonic() - started:.3f}", flush=True)

peer = api.Peer(
    conf=api.PeerConf(neighbor_address=peer_ip, peer_asn=int(peer_as)),
    # Retry after 1 s as Porter's speaker does (GoBGP's default is 120 s).
    timers=api.Timers(config=api.TimersConfig(connect_retry=1)),
    afi_safis=[
        api.AfiSafi(
            config=api.AfiSafiConfig(family=family, enabled=True),
            add_paths=api.AddPaths(config=api.AddPathsConfig(send_max=8)),
        )
    ],
)
stub.AddPeer(api.AddPeerRequest(peer=peer))
print("peer-added", flush=True)
