"""The `numail` command: seal credentials for Git, make local keyrings, verify the audit trail."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from numail import audit_cli, crypto
from numail.api import GROUP, VERSION
from numail.api.sealing import seal_credentials


def _workspace_public_key(name: str, kubeconfig: str | None) -> str:
    from kubernetes import client, config  # only this subcommand needs a cluster

    api = config.new_client_from_config(config_file=kubeconfig)
    try:
        ws = client.CustomObjectsApi(api).get_cluster_custom_object(
            GROUP, VERSION, "workspaces", name
        )
    finally:
        api.close()
    key = (ws.get("status") or {}).get("sealingPublicKey")
    if not key:
        raise SystemExit(
            f"numail seal: workspace {name!r} has no status.sealingPublicKey yet; "
            "wait for it to be Ready (kubectl get workspace {name})"
        )
    return str(key)


def _read_public_key(path: str) -> str:
    text = Path(path).read_text().strip()
    if text.startswith("-----BEGIN"):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

        loaded = serialization.load_pem_public_key(text.encode())
        if not isinstance(loaded, X25519PublicKey):
            raise SystemExit(f"numail seal: {path} is not an X25519 public key")
        return crypto.public_key_text(loaded)
    return text


def cmd_seal(args: argparse.Namespace) -> int:
    if bool(args.workspace) == bool(args.public_key):
        raise SystemExit("numail seal: give exactly one of --workspace NAME or --public-key FILE")
    text = (
        _workspace_public_key(args.workspace, args.kubeconfig)
        if args.workspace
        else _read_public_key(args.public_key)
    )
    try:
        public_key = crypto.public_key_from_text(text)
    except crypto.CryptoError as err:
        raise SystemExit(f"numail seal: {err}") from None
    plaintext = sys.stdin.buffer.read()
    if not plaintext.strip():
        raise SystemExit("numail seal: nothing on standard input; pipe the credentials JSON in")
    try:
        blob = seal_credentials(public_key, plaintext, args.mailbox)
    except ValueError as err:
        raise SystemExit(f"numail seal: --mailbox: {err}") from None
    print(blob)
    return 0


def cmd_keys_generate_local(args: argparse.Namespace) -> int:
    from numail.keys.local import generate_keyring

    out = Path(args.out)
    if out.exists():
        raise SystemExit(
            f"numail keys generate-local: {out} exists; refusing to overwrite a master key"
        )
    out.touch(mode=0o600)
    out.write_text(generate_keyring(args.key_id))
    print(f"wrote a new local keyring to {out} (mode 0600); keep it out of Git")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="numail", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    seal = sub.add_parser(
        "seal",
        help="seal credentials (stdin) to a workspace's public key; the output is safe in Git",
        description="Reads credentials JSON on stdin and prints an nm1. blob for a Mailbox's "
        "spec.credentials.sealed. Only the operator of that workspace can open it, and only for "
        "that mailbox.",
    )
    seal.add_argument("--workspace", help="Workspace name; its public key is read from the cluster")
    seal.add_argument(
        "--public-key", help="file with the workspace's status.sealingPublicKey (offline)"
    )
    seal.add_argument("--mailbox", required=True, help="NAMESPACE/NAME of the Mailbox it is for")
    seal.add_argument(
        "--kubeconfig", help="kubeconfig path (default: $KUBECONFIG or ~/.kube/config)"
    )
    seal.set_defaults(func=cmd_seal)

    keys = sub.add_parser("keys", help="key management").add_subparsers(
        dest="keys_command", required=True
    )
    gen = keys.add_parser("generate-local", help="write a new keyring for the local key provider")
    gen.add_argument("--out", required=True, help="file to create (mode 0600)")
    gen.add_argument("--key-id", default="k1", help="id of the first master key")
    gen.set_defaults(func=cmd_keys_generate_local)

    audit_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
