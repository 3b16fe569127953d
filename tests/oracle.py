"""The official `standardwebhooks` package (PyPI) as the judge of the receiver's signatures.

The package needs Python 3.9 or newer. Where this interpreter has it, the check runs here;
on an older Python (3.6 in CI) it runs in a subprocess of the interpreter that
STANDARDWEBHOOKS_PYTHON names, which must have it. With neither, the test is skipped, naming
what to install, and fails instead where CI is set (.ci/run sets STANDARDWEBHOOKS_PYTHON).
Its name is not FIBOSMS_*: the tests clear every FIBOSMS_* setting of the shell (conftest.py).

Run as a script it is that subprocess: JSON on stdin, {"secret": "whsec_...", "requests":
[{"headers": {...}, "body": "<base64>"}, ...]}, and on stdout a JSON list with one result
per request: "ok", or the package's reason for refusing it.
"""
import base64
import json
import os
import subprocess
import sys

HERE = os.path.abspath(__file__)
ORACLE_PYTHON = 'STANDARDWEBHOOKS_PYTHON'


def judge(secret, requests):
    """The results for `requests` [(headers, body bytes)], by the package in this process."""
    import standardwebhooks
    webhook = standardwebhooks.Webhook(secret)
    results = []
    for headers, body in requests:
        try:
            webhook.verify(body, headers)
        except Exception as exc:  # the package's refusal, whatever its class
            results.append('%s: %s' % (type(exc).__name__, exc))
        else:
            results.append('ok')
    return results


def verify(secret, requests):
    """The official package's verdict on each of `requests` [(headers dict, body bytes)]."""
    try:
        import standardwebhooks  # noqa: F401
    except ImportError:
        pass
    else:
        return judge(secret, requests)
    python = os.environ.get(ORACLE_PYTHON)
    if not python:
        import pytest
        (pytest.fail if os.environ.get('CI') else pytest.skip)(
            'needs the official standardwebhooks package, which needs Python 3.9+ (this is %s):'
            ' set %s to a Python that has it (pip install standardwebhooks)'
            % (sys.version.split()[0], ORACLE_PYTHON))
    data = json.dumps({'secret': secret, 'requests': [
        {'headers': dict(headers), 'body': base64.b64encode(body).decode('ascii')}
        for headers, body in requests]})
    done = subprocess.run([python, HERE], input=data.encode('utf-8'), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=60)
    if done.returncode != 0:
        raise RuntimeError('%s %s failed:\n%s' % (python, HERE,
                                                  done.stderr.decode('utf-8', 'replace')))
    return json.loads(done.stdout.decode('utf-8'))


def main():
    data = json.loads(sys.stdin.buffer.read().decode('utf-8'))
    requests = [(r['headers'], base64.b64decode(r['body'])) for r in data['requests']]
    print(json.dumps(judge(data['secret'], requests)))


if __name__ == '__main__':
    main()
