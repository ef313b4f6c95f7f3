"""Lists every service and RPC a coordinator serves, by server reflection (as `grpcurl describe`).

Needs no stubs: the descriptors come from the server. A reader token is enough.

    HEIRLOOM_TOKEN=$(cat admin.token) python clients/python/describe.py \
        --coordinator 127.0.0.1:7070 --ca-cert certs/ca.pem

Exits 1 with the server's status code and message if reflection is refused.
"""

import argparse
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from heirloom_channel import add_connection_arguments, channel
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


def signature(method):
    request = ("stream " if method.client_streaming else "") + method.input_type.full_name
    response = ("stream " if method.server_streaming else "") + method.output_type.full_name
    return f"  rpc {method.name}({request}) returns ({response})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_connection_arguments(parser, "reader (or any other)")
    args = parser.parse_args()
    with channel(args) as connection:
        database = ProtoReflectionDescriptorDatabase(connection)
        pool = DescriptorPool(database)
        try:
            for name in sorted(database.get_services()):
                print(name)
                for method in pool.FindServiceByName(name).methods:
                    print(signature(method))
        except grpc.RpcError as error:
            print(f"refused: {error.code().name}: {error.details()}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
