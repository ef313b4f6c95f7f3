"""The connection every example makes: TLS checked against a CA, a bearer token on every call."""

import os
import sys

import grpc


def add_connection_arguments(parser, token_role):
    parser.add_argument("--coordinator", default="127.0.0.1:7070", help="host:port")
    parser.add_argument("--ca-cert", required=True, help="the CA that signed the coordinator's certificate")
    parser.add_argument("--tls-server-name", help="the name in the coordinator's certificate, if not the host")
    parser.add_argument("--token-file", help=f"a file holding a {token_role} token (or HEIRLOOM_TOKEN)")


def channel(args):
    token = open(args.token_file).read().strip() if args.token_file else os.environ.get("HEIRLOOM_TOKEN")
    if not token:
        sys.exit("give a token: --token-file FILE or the HEIRLOOM_TOKEN variable")
    with open(args.ca_cert, "rb") as file:
        tls = grpc.ssl_channel_credentials(root_certificates=file.read())
    bearer = grpc.access_token_call_credentials(token)
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    return grpc.secure_channel(args.coordinator, grpc.composite_channel_credentials(tls, bearer), options)
