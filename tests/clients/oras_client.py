"""Drives oras-py (PyPI `oras`, the ORAS Python SDK) for tests/e2e_clients_auth.rs.

The PyPI package ships no command-line tool, so this script is one: each call is a new
process, so a login persists only through the Docker-style config file, as for any client.

    oras_client.py [--insecure] [--ca FILE] [--auth token|basic] --config FILE HOST login USER
    oras_client.py ... HOST push REPO:TAG DIR FILE...    (FILE names relative to DIR)
    oras_client.py ... HOST pull REPO:TAG OUTDIR         (prints the pulled files' paths)

The password for `login` is read from ORAS_PASSWORD. Every HTTP exchange is logged to
stderr (method, URL, status, WWW-Authenticate, error body), so a failing test shows what
the client sent and got. Exit status 0 on success, 1 on any error (with the error on stderr).

`push --prime-push-scope` first sends one POST to the repository's upload endpoint through
oras-py's own request path, so the token oras-py fetches is asked for `pull,push` from the
start. That is a workaround for oras-py 0.2.x's token backend, which never asks for a new
token when a 401 names a wider scope than the token it holds (see TokenAuth.
authenticate_request); the tests use it only to show that the rest of the flow works.
"""

import argparse
import os
import sys


def log_response(response, *args, **kwargs):
    req = response.request
    challenge = response.headers.get("WWW-Authenticate")
    sent = req.headers.get("Authorization", "")
    scheme = sent.split(" ", 1)[0] if sent else "-"
    errors = ""
    if response.status_code >= 400 and "json" in response.headers.get("Content-Type", ""):
        errors = " body=" + response.text[:300].replace("\n", " ")
    print(
        f"oras-http: {req.method} {req.url} auth={scheme} -> {response.status_code}"
        + (f" challenge={challenge}" if challenge else "")
        + errors,
        file=sys.stderr,
    )


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--insecure", action="store_true", help="plain HTTP")
    p.add_argument("--ca", help="CA bundle to verify the registry's certificate with")
    p.add_argument("--auth", choices=["token", "basic"], default="token")
    p.add_argument("--config", required=True, help="Docker-style config with logins")
    p.add_argument("--debug", action="store_true")
    p.add_argument("host")
    sub = p.add_subparsers(dest="cmd", required=True)
    login = sub.add_parser("login")
    login.add_argument("user")
    push = sub.add_parser("push")
    push.add_argument("target")
    push.add_argument("dir")
    push.add_argument("files", nargs="+")
    push.add_argument("--prime-push-scope", action="store_true")
    pull = sub.add_parser("pull")
    pull.add_argument("target")
    pull.add_argument("outdir")
    a = p.parse_args()
    # push changes directory (oras-py wants the files under the working directory).
    a.config = os.path.abspath(a.config)
    if a.cmd == "pull":
        a.outdir = os.path.abspath(a.outdir)

    import oras.client
    from oras.logger import setup_logger

    setup_logger(quiet=not a.debug, debug=a.debug, nocolor=True)
    client = oras.client.OrasClient(
        hostname=a.host,
        insecure=a.insecure,
        tls_verify=a.ca if a.ca else True,
        auth_backend=a.auth,
    )
    client.session.hooks["response"].append(log_response)
    target = f"{a.host}/{a.target}" if a.cmd != "login" else None

    if a.cmd == "login":
        password = os.environ["ORAS_PASSWORD"]
        result = client.login(
            username=a.user,
            password=password,
            hostname=a.host,
            config_path=a.config,
        )
        print(result)
        return 0
    if a.cmd == "push":
        if a.prime_push_scope:
            container = client.get_container(target)
            client.auth.load_configs(container, configs=[a.config])
            url = f"{client.prefix}://{container.upload_blob_url()}"
            r = client.do_request(url, "POST")
            print(f"oras-prime: POST upload -> {r.status_code}", file=sys.stderr)
        os.chdir(a.dir)
        r = client.push(target=target, files=a.files, config_path=a.config)
        print(f"pushed {target}: {r.status_code}")
        return 0 if r.status_code in (200, 201) else 1
    if a.cmd == "pull":
        files = client.pull(target=target, config_path=a.config, outdir=a.outdir)
        for f in files:
            print(f)
        return 0
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # the test reads the reason from stderr
        print(f"oras-error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
