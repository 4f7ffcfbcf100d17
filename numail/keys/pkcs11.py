"""The `pkcs11` key provider: DEKs wrapped by AES-256-GCM inside an HSM whose key never leaves it.

Key versions are keys on the token labelled `<keyLabel>`, `<keyLabel>.v2`, `<keyLabel>.v3`, ...;
the highest is current. Each wrapped DEK records its version, so DEKs wrapped before a rotation
keep unwrapping until they are rewrapped.

PKCS#11 logs a user in per process and per token, not per session: a second C_Login fails, and
closing a logged-in session logs out every other session. So this module keeps one logged-in
session per (module, token label) for the whole process, shared by every provider on that token
and used under a lock. HSM calls are short, so the lock costs little next to the network hop to
the key service.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11err

from numail.keys.base import (
    KeyContext,
    KeyProviderError,
    KeyStatus,
    ProviderUnavailable,
    UnwrapRefused,
)

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Pkcs11Lib
    from pkcs11.types import DecryptMixin, EncryptMixin

    class _AesKey(EncryptMixin, DecryptMixin):
        """What python-pkcs11 returns for a secret key with CKA_ENCRYPT and CKA_DECRYPT."""


_MAGIC = b"NMPK"
_VERSION = 1
_HEADER = struct.Struct(">4sBI12s")  # magic, format version, key version, GCM nonce
_TAG_BYTES = 16

# The session or the device went away: drop the session so the next call logs in afresh.
_SESSION_LOST: tuple[type[Exception], ...] = (
    p11err.SessionHandleInvalid,
    p11err.SessionClosed,
    p11err.DeviceRemoved,
    p11err.DeviceError,
    p11err.TokenNotPresent,
    p11err.UserNotLoggedIn,
    p11err.ObjectHandleInvalid,
    p11err.KeyHandleInvalid,
)

# What HSMs answer when the GCM tag does not verify. SoftHSM2 says CKR_GENERAL_ERROR.
_DECRYPT_REFUSED: tuple[type[Exception], ...] = (
    p11err.EncryptedDataInvalid,
    p11err.EncryptedDataLenRange,
    p11err.GeneralError,
    p11err.FunctionFailed,
    p11err.DataInvalid,
    p11err.DataLenRange,
)


@dataclass
class _TokenLogin:
    """The process's one logged-in session on a token, and the PIN digest it logged in with."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    session: pkcs11.Session | None = None
    pin_digest: bytes = b""

    def drop(self) -> None:
        if self.session is not None:
            with suppress(p11err.PKCS11Error):  # Already gone: a fresh login follows.
                self.session.close()
            self.session = None
            self.pin_digest = b""


_LOGINS: dict[tuple[str, str], _TokenLogin] = {}
_LOGINS_LOCK = threading.Lock()


def _login_for(module: str, token_label: str) -> _TokenLogin:
    with _LOGINS_LOCK:
        return _LOGINS.setdefault((module, token_label), _TokenLogin())


def _load(module: str) -> Pkcs11Lib:
    """python-pkcs11 keeps one initialised library per path; loading is not thread-safe."""
    with _LOGINS_LOCK:
        try:
            return pkcs11.lib(module)
        except (p11err.PKCS11Error, OSError) as err:
            raise ProviderUnavailable(
                f"cannot load PKCS#11 module {module} ({err}); check spec.pkcs11.module and "
                "that the module is installed in the operator's image"
            ) from None


class Pkcs11KeyProvider:
    """AES-256-GCM wrapping by a sensitive, non-extractable AES key found by label."""

    name = "pkcs11"

    def __init__(
        self, module: str, token_label: str, key_label: str, read_pin: Callable[[], str]
    ) -> None:
        self._module = module
        self._token_label = token_label
        self._key_label = key_label
        self._read_pin = read_pin
        self._pin: str | None = None
        self._current: int | None = None
        self._versions = re.compile(rf"^{re.escape(key_label)}(?:\.v([0-9]+))?$")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Pkcs11KeyProvider:
        """`module`, `tokenLabel`, `keyLabel`, and the user PIN from exactly one of `pinEnv`
        (an environment variable's name) or `pinFile` (a path), or `pin`, which only the
        operator sets, from the Secret named by `pinSecretRef`; the CRD has no `pin` field."""
        missing = [k for k in ("module", "tokenLabel", "keyLabel") if not config.get(k)]
        if missing:
            raise KeyProviderError(
                f"pkcs11 key provider needs spec.pkcs11.{', spec.pkcs11.'.join(missing)}"
            )
        sources = [k for k in ("pinEnv", "pinFile", "pin") if config.get(k)]
        if len(sources) != 1:
            raise KeyProviderError(
                "pkcs11 key provider needs exactly one PIN source: spec.pkcs11.pinSecretRef, "
                f"or pinEnv or pinFile in settings (got {', '.join(sources) or 'none'})"
            )
        token = str(config["tokenLabel"])
        if sources[0] == "pinEnv":
            read_pin = _pin_from_env(str(config["pinEnv"]), token)
        elif sources[0] == "pinFile":
            read_pin = _pin_from_file(Path(str(config["pinFile"])), token)
        else:
            pin = str(config["pin"])

            def read_pin() -> str:
                return pin

        return cls(str(config["module"]), token, str(config["keyLabel"]), read_pin)

    def key_id(self, version: int) -> str:
        return f"pkcs11:token={self._token_label};object={self.key_label(version)}"

    def key_label(self, version: int) -> str:
        return self._key_label if version == 1 else f"{self._key_label}.v{version}"

    @contextmanager
    def session(self) -> Iterator[pkcs11.Session]:
        """The token's shared, logged-in session, with its lock held for the block.

        For tools and tests that inspect keys: opening another logged-in session in this
        process would fail, and closing it would log the key service out.
        """
        login = _login_for(self._module, self._token_label)
        with login.lock:
            session = self._logged_in(login)
            try:
                yield session
            except _SESSION_LOST:
                login.drop()
                raise

    def wrap(self, dek: bytes, context: KeyContext) -> bytes:
        nonce = os.urandom(12)
        with self._hsm("wrap") as session:
            version = self._current_version(session)
            header = _HEADER.pack(_MAGIC, _VERSION, version, nonce)
            aad = header + context.aad()
            key = self._key(session, version)
            sealed = key.encrypt(dek, mechanism=Mechanism.AES_GCM, mechanism_param=_gcm(nonce, aad))
        return header + cast(bytes, sealed)  # bytes in, bytes out; only iterators stream

    def unwrap(self, wrapped: bytes, context: KeyContext) -> bytes:
        if len(wrapped) < _HEADER.size + _TAG_BYTES:
            raise UnwrapRefused("not a DEK wrapped by the pkcs11 key provider, or truncated")
        magic, fmt, version, nonce = _HEADER.unpack_from(wrapped)
        if magic != _MAGIC or fmt != _VERSION or version < 1:
            raise UnwrapRefused("not a DEK wrapped by the pkcs11 key provider")
        header = wrapped[: _HEADER.size]
        with self._hsm("unwrap") as session:
            try:
                key = self._key(session, version)
            except p11err.NoSuchKey:
                raise UnwrapRefused(
                    f"wrapped under {self.key_id(version)}, which is not on the token"
                ) from None
            try:
                dek = key.decrypt(
                    wrapped[_HEADER.size :],
                    mechanism=Mechanism.AES_GCM,
                    mechanism_param=_gcm(nonce, header + context.aad()),
                )
            except _DECRYPT_REFUSED:
                raise UnwrapRefused(
                    f"wrapped DEK does not unwrap for workspace {context.workspace!r} "
                    f"version {context.key_version} with {self.key_id(version)}: "
                    "another workspace's key, or altered"
                ) from None
        return cast(bytes, dek)

    def status(self) -> KeyStatus:
        with self._hsm("status") as session:
            versions = self._list_versions(session)
            if not versions:
                return KeyStatus(
                    healthy=False,
                    key_id=self.key_id(1),
                    message=f"no AES key labelled {self._key_label!r} on token "
                    f"{self._token_label!r}; generate a sensitive, non-extractable AES-256 key "
                    "with that label (docs/keys-backends.md)",
                )
            current = self._current = max(versions)
            key = versions[current]
            weak = [
                what
                for what, attr, wanted in (
                    ("extractable", Attribute.EXTRACTABLE, False),
                    ("not sensitive", Attribute.SENSITIVE, True),
                    ("not allowed to encrypt", Attribute.ENCRYPT, True),
                    ("not allowed to decrypt", Attribute.DECRYPT, True),
                )
                if bool(key[attr]) is not wanted
            ]
        key_id = self.key_id(current)
        if weak:
            return KeyStatus(
                healthy=False,
                key_id=key_id,
                message=f"{key_id} is {', '.join(weak)}; rotate to a new key, which this "
                "provider generates sensitive and non-extractable",
            )
        return KeyStatus(healthy=True, key_id=key_id)

    def rotate(self) -> str:
        """Generate the next version in the HSM and make it current.

        Only one process may rotate a token's key at a time (the operator's leader): two
        rotating at once would make two keys with the same label."""
        with self._hsm("rotate") as session:
            versions = self._list_versions(session)
            version = max(versions, default=0) + 1
            self._generate(session, version)
            self._current = version
        return self.key_id(version)

    def ensure_key(self) -> str:
        """Generate the first key version unless one exists; return the current key id."""
        with self._hsm("ensure_key") as session:
            versions = self._list_versions(session)
            if not versions:
                self._generate(session, 1)
            current = self._current = max(versions, default=1)
        return self.key_id(current)

    @contextmanager
    def _hsm(self, call: str) -> Iterator[pkcs11.Session]:
        """A session, with every HSM failure turned into ProviderUnavailable naming the fix."""
        try:
            with self.session() as session:
                yield session
        except KeyProviderError:
            raise
        except p11err.MultipleObjectsReturned:
            raise ProviderUnavailable(
                f"pkcs11 {call}: token {self._token_label!r} holds two keys with the same "
                f"{self._key_label!r} version label; keep one (a DEK wrapped under the other "
                "is lost)"
            ) from None
        except p11err.PKCS11Error as err:
            raise ProviderUnavailable(
                f"pkcs11 {call} on token {self._token_label!r} failed ({type(err).__name__}); "
                "check the HSM and spec.pkcs11"
            ) from None

    def _logged_in(self, login: _TokenLogin) -> pkcs11.Session:
        if self._pin is None:
            self._pin = self._read_pin()
        digest = hashlib.sha256(self._pin.encode()).digest()
        if login.session is not None and hmac.compare_digest(login.pin_digest, digest):
            return login.session
        # Another provider logged in with a different PIN: let the HSM judge this one.
        login.drop()
        lib = _load(self._module)
        token = self._token(lib)
        try:
            session = token.open(rw=True, user_pin=self._pin)
        except (p11err.PinIncorrect, p11err.PinInvalid, p11err.PinLenRange):
            self._pin = None
            raise ProviderUnavailable(
                f"token {self._token_label!r} refused the user PIN; fix the PIN source "
                "(spec.pkcs11.pinSecretRef, pinEnv or pinFile)"
            ) from None
        except (p11err.PinLocked, p11err.PinExpired) as err:
            raise ProviderUnavailable(
                f"token {self._token_label!r}: the user PIN is {type(err).__name__}; "
                "the token's security officer must reset it"
            ) from None
        except p11err.UserAlreadyLoggedIn:
            raise ProviderUnavailable(
                f"token {self._token_label!r} is already logged in by other code in this "
                "process; use Pkcs11KeyProvider.session() instead of a second login"
            ) from None
        login.session = session
        login.pin_digest = digest
        return session

    def _token(self, lib: Pkcs11Lib) -> pkcs11.Token:
        try:
            return lib.get_token(token_label=self._token_label)
        except p11err.NoSuchToken:
            raise ProviderUnavailable(
                f"no token labelled {self._token_label!r} in PKCS#11 module {self._module}; "
                "check spec.pkcs11.tokenLabel (tokens made after the module was loaded show "
                "only after the operator restarts)"
            ) from None
        except p11err.MultipleTokensReturned:
            raise ProviderUnavailable(
                f"more than one token is labelled {self._token_label!r}; relabel one"
            ) from None

    def _list_versions(self, session: pkcs11.Session) -> dict[int, pkcs11.Object]:
        found: dict[int, pkcs11.Object] = {}
        for obj in session.get_objects(
            {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES}
        ):
            match = self._versions.match(str(obj[Attribute.LABEL]))
            if match is None:
                continue
            version = int(match.group(1) or 1)
            if version == 1 and match.group(1) is not None:
                continue  # `.v1` is not a name this provider gives; the first is the bare label.
            if version in found:
                raise p11err.MultipleObjectsReturned(self.key_label(version))
            found[version] = obj
        return found

    def _current_version(self, session: pkcs11.Session) -> int:
        if self._current is None:
            versions = self._list_versions(session)
            if not versions:
                raise ProviderUnavailable(
                    f"no AES key labelled {self._key_label!r} on token {self._token_label!r}; "
                    "generate a sensitive, non-extractable AES-256 key with that label "
                    "(docs/keys-backends.md)"
                )
            self._current = max(versions)
        return self._current

    def _key(self, session: pkcs11.Session, version: int) -> _AesKey:
        key = session.get_key(
            object_class=ObjectClass.SECRET_KEY,
            key_type=KeyType.AES,
            label=self.key_label(version),
        )
        return cast("_AesKey", key)  # get_key filtered on CKO_SECRET_KEY and CKK_AES

    def _generate(self, session: pkcs11.Session, version: int) -> None:
        session.generate_key(
            KeyType.AES,
            256,
            label=self.key_label(version),
            store=True,
            capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
            template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.WRAP: False,
                Attribute.UNWRAP: False,
            },
        )


def _gcm(nonce: bytes, aad: bytes) -> pkcs11.GCMParams:
    return pkcs11.GCMParams(nonce, aad, _TAG_BYTES * 8)


def _pin_from_env(name: str, token: str) -> Callable[[], str]:
    def read() -> str:
        pin = os.environ.get(name, "").strip()
        if not pin:
            raise ProviderUnavailable(
                f"the user PIN for token {token!r} should be in environment variable {name}, "
                "which is unset or empty"
            )
        return pin

    return read


def _pin_from_file(path: Path, token: str) -> Callable[[], str]:
    def read() -> str:
        try:
            pin = path.read_text().strip()
        except OSError as err:
            raise ProviderUnavailable(
                f"cannot read the user PIN for token {token!r} from {path}: {err.strerror}"
            ) from None
        if not pin:
            raise ProviderUnavailable(f"the PIN file {path} for token {token!r} is empty")
        return pin

    return read
