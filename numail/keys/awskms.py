"""The `awsKms` key provider: DEKs wrapped by a symmetric AWS KMS key that never leaves AWS."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from numail.keys.base import (
    KeyContext,
    KeyProviderError,
    KeyStatus,
    ProviderUnavailable,
    UnwrapRefused,
)

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

# Our envelope around KMS's CiphertextBlob, so a blob from another provider is refused here
# instead of being sent to KMS (and blamed on the key or the context).
_MAGIC = b"NMAK"
_VERSION = 1
_HEADER = _MAGIC + bytes([_VERSION])

# KMS's answer when the blob, the context or the key does not match: the binding did its job.
_REFUSED = frozenset(
    {"InvalidCiphertextException", "IncorrectKeyException", "AccessDeniedException"}
)

# Short timeouts and few retries: callers (reconcile loops, the key service) retry themselves,
# and a worker waiting on an unreachable KMS should hear so within seconds.
_BOTO_CONFIG = Config(
    connect_timeout=5,
    read_timeout=10,
    retries={"mode": "standard", "max_attempts": 3},
)


class AwsKmsKeyProvider:
    """Encrypt/Decrypt with the workspace context as KMS encryption context.

    KMS enforces the context itself, and CloudTrail logs it with every Decrypt, so an auditor
    sees which workspace each unwrap was for.
    """

    name = "awsKms"

    def __init__(self, key_id: str, client: KMSClient) -> None:
        self._key_id = key_id
        self._client = client

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AwsKmsKeyProvider:
        """`keyId` (ARN, key id or alias), `region`, `endpointUrl`. Credentials come from the
        SDK's default chain (IRSA, instance profile, environment), never from this config."""
        key_id = str(config.get("keyId") or "")
        if not key_id:
            raise KeyProviderError(
                "awsKms key provider needs spec.awsKms.keyId (a key ARN, key id or alias/NAME)"
            )
        region = str(config.get("region") or "") or _region_from_arn(key_id)
        endpoint = str(config.get("endpointUrl") or "") or None
        try:
            client = boto3.session.Session().client(
                "kms", region_name=region or None, endpoint_url=endpoint, config=_BOTO_CONFIG
            )
        except NoRegionError:
            raise KeyProviderError(
                f"awsKms key {key_id}: no region; set spec.awsKms.region, use the key's full "
                "ARN, or set AWS_REGION for the operator"
            ) from None
        except (BotoCoreError, ValueError) as err:
            raise KeyProviderError(
                f"awsKms key {key_id}: invalid client settings ({type(err).__name__}); "
                "check spec.awsKms.region and spec.awsKms.endpointUrl"
            ) from None
        return cls(key_id, client)

    def wrap(self, dek: bytes, context: KeyContext) -> bytes:
        try:
            out = self._client.encrypt(
                KeyId=self._key_id, Plaintext=dek, EncryptionContext=context.as_dict()
            )
        except ClientError as err:
            self._raise(err, "Encrypt", refusable=False)
        except BotoCoreError as err:
            self._raise(err, "Encrypt", refusable=False)
        return _HEADER + out["CiphertextBlob"]

    def unwrap(self, wrapped: bytes, context: KeyContext) -> bytes:
        if len(wrapped) <= len(_HEADER) or not wrapped.startswith(_HEADER):
            raise UnwrapRefused("not a DEK wrapped by the awsKms key provider")
        try:
            # KeyId makes KMS refuse a blob made under any other key, even one we may use.
            out = self._client.decrypt(
                CiphertextBlob=wrapped[len(_HEADER) :],
                KeyId=self._key_id,
                EncryptionContext=context.as_dict(),
            )
        except ClientError as err:
            if _code(err) in _REFUSED:
                raise UnwrapRefused(
                    f"AWS KMS key {self._key_id} refused to unwrap the DEK of workspace "
                    f"{context.workspace!r} version {context.key_version} ({_code(err)}): "
                    "another workspace's key, another KMS key, or altered"
                ) from None
            self._raise(err, "Decrypt", refusable=True)
        except BotoCoreError as err:
            self._raise(err, "Decrypt", refusable=True)
        return out["Plaintext"]

    def status(self) -> KeyStatus:
        try:
            meta = self._client.describe_key(KeyId=self._key_id)["KeyMetadata"]
        except ClientError as err:
            self._raise(err, "DescribeKey", refusable=False)
        except BotoCoreError as err:
            self._raise(err, "DescribeKey", refusable=False)
        arn = meta.get("Arn", self._key_id)
        state = meta.get("KeyState", "Unknown")
        if not meta.get("Enabled") or state != "Enabled":
            return KeyStatus(
                healthy=False,
                key_id=arn,
                message=f"AWS KMS key {arn} is {state}; enable it with `aws kms enable-key` "
                "(or cancel its deletion) before workspaces can be keyed",
            )
        if meta.get("KeyUsage") != "ENCRYPT_DECRYPT" or meta.get("KeySpec") not in (
            None,
            "SYMMETRIC_DEFAULT",
        ):
            return KeyStatus(
                healthy=False,
                key_id=arn,
                message=f"AWS KMS key {arn} is not a symmetric ENCRYPT_DECRYPT key; "
                "create one with `aws kms create-key` and its defaults",
            )
        return KeyStatus(healthy=True, key_id=arn)

    def rotate(self) -> str:
        raise NotImplementedError(
            f"AWS KMS rotates the material of key {self._key_id} by itself: turn it on with "
            "`aws kms enable-key-rotation`; old DEKs keep unwrapping. Do not point an alias "
            "at a different key while DEKs are wrapped under the old one."
        )

    def _raise(self, err: Exception, call: str, *, refusable: bool) -> NoReturn:
        """Name the key, the call and the fix. Never echo the service's text: a validation
        message may quote request parameters, and the Plaintext parameter is a DEK."""
        key = self._key_id
        if isinstance(err, ClientError):
            code = _code(err)
            if code in _REFUSED and not refusable:
                fix = f"grant the operator kms:{call} on it in the key policy or IAM"
            elif code in ("NotFoundException", "InvalidArnException"):
                fix = "check spec.awsKms.keyId and spec.awsKms.region"
            elif code in ("DisabledException", "KMSInvalidStateException"):
                fix = "enable the key with `aws kms enable-key` or cancel its pending deletion"
            elif code in (
                "UnrecognizedClientException",
                "InvalidSignatureException",
                "ExpiredTokenException",
            ):
                fix = "check the operator's AWS credentials (IRSA role or environment)"
            elif code in ("ThrottlingException", "LimitExceededException"):
                fix = "KMS is throttling requests; retry later or raise the request quota"
            else:
                fix = "retry; if it persists, check the key in the AWS console"
            raise ProviderUnavailable(f"AWS KMS {call} with key {key} failed ({code}): {fix}")
        if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
            raise ProviderUnavailable(
                f"AWS KMS {call} with key {key}: no AWS credentials; give the operator an IRSA "
                "role or the standard AWS_* environment variables"
            )
        if isinstance(err, (BotoConnectionError, HTTPClientError)):
            # These messages carry the endpoint URL only, which is what the reader needs.
            raise ProviderUnavailable(
                f"AWS KMS {call} with key {key}: cannot reach KMS ({err}); check the network "
                "path and spec.awsKms.endpointUrl"
            )
        raise ProviderUnavailable(
            f"AWS KMS {call} with key {key} failed ({type(err).__name__}); "
            "check spec.awsKms and the operator's AWS settings"
        )


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", "Unknown"))


def _region_from_arn(key_id: str) -> str:
    """arn:aws:kms:REGION:ACCOUNT:key/ID names its region; an alias or bare id does not."""
    parts = key_id.split(":")
    if len(parts) >= 6 and parts[0] == "arn" and parts[2] == "kms":
        return parts[3]
    return ""
