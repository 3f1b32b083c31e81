#!/usr/bin/env python3
"""Creates a bucket on an S3-compatible endpoint with a SigV4-signed PUT (stdlib only).

    s3_mkbucket.py ENDPOINT BUCKET ACCESS_KEY SECRET_KEY [REGION]

Exits 0 when the bucket exists afterwards (created, or already owned by this user).
"""
import datetime
import hashlib
import hmac
import sys
import urllib.error
import urllib.parse
import urllib.request


def sign(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def main() -> int:
    endpoint, bucket, ak, sk = sys.argv[1:5]
    region = sys.argv[5] if len(sys.argv) > 5 else "us-east-1"
    host = urllib.parse.urlparse(endpoint).netloc
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload = hashlib.sha256(b"").hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        ["PUT", f"/{bucket}", "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, payload]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = sign(sign(sign(sign(("AWS4" + sk).encode(), day), region), "s3"), "aws4_request")
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    req = urllib.request.Request(f"{endpoint.rstrip('/')}/{bucket}", method="PUT", data=b"")
    for name, value in headers.items():
        if name != "host":
            req.add_header(name, value)
    req.add_header("Authorization", f"AWS4-HMAC-SHA256 Credential={ak}/{scope}, SignedHeaders={signed}, Signature={signature}")
    try:
        urllib.request.urlopen(req, timeout=10).read()
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace")
        if e.code == 409 and "BucketAlreadyOwnedByYou" in body:
            return 0
        print(f"create bucket {bucket} at {endpoint}: HTTP {e.code}: {body}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
