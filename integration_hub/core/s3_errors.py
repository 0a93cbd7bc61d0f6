"""S3 failures explained in one line: what failed, why, and the fix; never a credential."""

from __future__ import annotations

import re

S3_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
S3_ACCESS_DENIED = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "403", "Forbidden"}
S3_BAD_KEY_ID = {"InvalidAccessKeyId", "InvalidClientTokenId"}
S3_BAD_SECRET = {"SignatureDoesNotMatch"}
S3_BAD_TOKEN = {"ExpiredToken", "InvalidToken", "TokenRefreshRequired", "ExpiredTokenException"}
S3_WRONG_REGION = {
    "PermanentRedirect",
    "AuthorizationHeaderMalformed",
    "301",
    "IllegalLocationConstraintException",
}
S3_RETRYABLE = {"InternalError", "ServiceUnavailable", "SlowDown", "503", "500", "RequestTimeout"}


def one_line(text: str) -> str:
    return " ".join(text.split())


SECRET_PATTERNS = [
    re.compile(r"(?i)(AccountKey|SharedAccessSignature|sig|signature|se?cret[\w-]*|token)=([^;&\s'\"]+)"),
    re.compile(r"(https?://[^\s?'\"]+)\?[^\s'\"]*"),
]


def scrub(text: str) -> str:
    """Remove anything that looks like a credential from a service-provided message."""
    text = SECRET_PATTERNS[0].sub(r"\1=***", text)
    text = SECRET_PATTERNS[1].sub(r"\1", text)
    return one_line(text)[:300]


def s3_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    if not code:
        code = str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return code


def explain_s3_error(
    exc: BaseException,
    *,
    action: str,
    target: str,
    bucket: str,
    endpoint: str,
    region: str | None,
    permission: str,
    limits: str = "",
) -> tuple[str, str | None]:
    """Map a botocore exception to a one-line, secret-free message and the service's error code.

    `limits` (e.g. "3 attempts, connect timeout 10 s, read timeout 60 s") says what a call that
    could not reach the endpoint gave up after.
    """
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ProxyConnectionError,
        ReadTimeoutError,
    )

    what = f"Could not {action} {target}"
    gave_up = f" (gave up after {limits})" if limits else ""
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError)):
        return (
            f"{what}: the S3 endpoint {endpoint} is unreachable{gave_up}; check `endpoint_url`/region, DNS, "
            "firewall and proxy settings.",
            "EndpointUnreachable",
        )
    if isinstance(exc, (ReadTimeoutError, ConnectionClosedError)):
        return (
            f"{what}: the connection to {endpoint} timed out or was dropped{gave_up}; retry, and check the network.",
            "ConnectionDropped",
        )
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return (
            f"{what}: no (complete) AWS credentials were found; configure an access key id and secret, "
            "a profile or an instance/role identity.",
            "NoCredentials",
        )
    if not isinstance(exc, ClientError):
        return (f"{what}: {type(exc).__name__}: {scrub(str(exc))}", None)

    code = s3_code(exc)
    if code == "NoSuchBucket":
        return (
            f"{what}: bucket '{bucket}' does not exist at {endpoint}; create it or fix `bucket` "
            "on the connection.",
            code,
        )
    if code in S3_BAD_KEY_ID:
        return (
            f"{what}: the AWS access key id is not valid for {endpoint}; check the configured access key id "
            "(and that it belongs to this account/endpoint).",
            code,
        )
    if code in S3_BAD_SECRET:
        return (
            f"{what}: the request signature does not match; the AWS secret access key is wrong "
            "(or does not belong to the access key id), or the system clock is off.",
            code,
        )
    if code in S3_BAD_TOKEN:
        return (
            f"{what}: the AWS session token is invalid or expired; refresh the temporary credentials.",
            code,
        )
    if code in S3_ACCESS_DENIED:
        return (
            f"{what}: access denied; grant {permission} on arn:aws:s3:::{bucket}/* to the configured "
            "identity (check bucket policy, IAM policy and KMS key policy).",
            code,
        )
    if code in S3_WRONG_REGION:
        return (
            f"{what}: bucket '{bucket}' is not in region '{region}'; set the bucket's region in the "
            "connection.",
            code,
        )
    if code == "RequestTimeTooSkewed":
        return (f"{what}: the system clock is too far off; sync the clock (NTP).", code)
    if code == "NoSuchUpload":
        return (
            f"{what}: the multipart upload disappeared (aborted by a lifecycle rule or another process); "
            "re-run the export.",
            code,
        )
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
    hint = "retry later" if code in S3_RETRYABLE else "see the S3 error code"
    message = scrub(str(exc.response.get("Error", {}).get("Message", "")))
    return (f"{what}: S3 returned {code or 'an error'} (HTTP {status}) {message}; {hint}.", code)
