"""receiver.py as a CGI script: a real process per request, the request in its environment
(bytes, as a web server passes them) and stdin, the response on stdout, the log on stderr."""
import os
import subprocess
import sys
import urllib.parse

import pytest

from conftest import DONE, RETRY, ROOT, rows

SCRIPT = os.path.join(ROOT, 'receiver.py')
VIETNAMESE = 'Xin chào, cho tôi hỏi giá sản phẩm này? Cảm ơn nhiều ạ 😊'


def run_cgi(db, query=b'', method='GET', body=None, content_type=None, path_info='/'):
    """Run receiver.py for one CGI request; return (status line, headers, body, stderr).

    The environment is bytes throughout, as execve(2) gives it, so a query string may hold
    any byte a web server passes on.
    """
    env = {k: v for k, v in os.environb.items() if not k.startswith(b'FIBOSMS_')}
    request = {
        'GATEWAY_INTERFACE': 'CGI/1.1', 'REQUEST_METHOD': method, 'QUERY_STRING': query,
        'PATH_INFO': path_info, 'SCRIPT_NAME': '/cgi-bin/receiver.py',
        'REMOTE_ADDR': '192.0.2.10', 'SERVER_NAME': 'sms.example.com', 'SERVER_PORT': '443',
        'SERVER_PROTOCOL': 'HTTP/1.1', 'FIBOSMS_DB': db,
        'FIBOSMS_ALLOW': '192.0.2.10',     # a caller from elsewhere needs an allowlist or token
    }
    if body is not None:
        request['CONTENT_LENGTH'] = str(len(body))
        request['CONTENT_TYPE'] = content_type or 'application/x-www-form-urlencoded'
    for key, value in request.items():
        env[os.fsencode(key)] = os.fsencode(value)
    done = subprocess.run([sys.executable, SCRIPT], env=env, input=body or b'',
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert done.returncode == 0, done.stderr
    head, _, content = done.stdout.partition(b'\r\n\r\n')
    lines = head.decode('latin-1').split('\r\n')
    headers = dict(line.split(': ', 1) for line in lines[1:])
    return lines[0], headers, content, done.stderr.decode('utf-8', 'replace')


def query_of(**params):
    return urllib.parse.urlencode(params).encode('ascii')


def test_cgi_push_answers_200_and_status_2(db):
    """A CGI push prints `Status: 200 OK`, the headers, and exactly <Status>2</Status>."""
    status, headers, content, _ = run_cgi(db, query_of(guid='g-1', phone='0912345678',
                                                       message='hello'))
    assert status == 'Status: 200 OK'
    assert headers['Content-Type'] == 'text/xml; charset=utf-8'
    assert headers['Content-Length'] == str(len(DONE))
    assert content == DONE


def test_cgi_push_is_stored_exactly(db):
    """A Vietnamese push over CGI is stored exactly, with its caller's address."""
    run_cgi(db, query_of(guid='g-vi', phone='+84912345678', message=VIETNAMESE))
    [row] = rows(db)
    assert (row['guid'], row['phone'], row['message'], row['charset']) == (
        'g-vi', '+84912345678', VIETNAMESE, 'utf-8')
    assert row['remote_addr'] == '192.0.2.10'


def test_cgi_post_form_is_stored(db):
    """A POSTed form body on stdin is read and stored."""
    body = query_of(guid='g-post', phone='0912345678', message=VIETNAMESE)
    status, _, content, _ = run_cgi(db, method='POST', body=body)
    assert (status, content) == ('Status: 200 OK', DONE)
    assert rows(db)[0]['message'] == VIETNAMESE


@pytest.mark.parametrize('query', [
    b'',
    b'phone=0912345678&message=no+guid',
    b'guid=g-1&message=no+phone',
    b'guid=g-1&guid=g-2&phone=0912345678',
])
def test_cgi_bad_request_answers_400_and_status_1(db, query):
    """A malformed CGI push prints `Status: 400 Bad Request` and <Status>1</Status>."""
    status, _, content, _ = run_cgi(db, query)
    assert status == 'Status: 400 Bad Request'
    assert content == RETRY
    assert not os.path.exists(db)


def test_cgi_log_line_goes_to_stderr(db):
    """The log line of a refused CGI push is written to stderr, never into the response."""
    status, _, content, err = run_cgi(db, b'phone=0912345678&message=secret+text')
    assert err.splitlines() == ['fibosms-receiver: answered 1 (HTTP 400): guid missing or empty']
    assert content == RETRY
    assert 'secret' not in err


def test_cgi_success_writes_nothing_to_stderr(db):
    """A stored CGI push leaves stderr empty (nothing for the web server's error log)."""
    _, _, _, err = run_cgi(db, query_of(guid='g-1', phone='0912345678', message='hi'))
    assert err == ''


@pytest.mark.parametrize('raw, charset, message', [
    (b'ch\xe0o', 'cp1258', 'chào'),              # Windows-1258, not UTF-8
    (b'Vi\xea\xf2t', 'cp1258', 'Vi\u00ea\u0323t'),  # 'Việt', cp1258's combining dot below
    (b'\x81\x8d', 'latin-1', '\x81\x8d'),         # undefined in Windows-1258
])
def test_cgi_raw_bytes_are_stored_and_recoverable(db, raw, charset, message):
    """Unescaped non-UTF-8 bytes in QUERY_STRING are stored, and raw_query gives them back."""
    query = b'guid=g-raw&phone=0912345678&message=' + raw
    status, _, content, _ = run_cgi(db, query)
    assert (status, content) == ('Status: 200 OK', DONE)
    [row] = rows(db)
    assert (row['charset'], row['message']) == (charset, message)
    assert row['raw_query'].encode('latin-1') == query


def read_bytes(name):
    with open(os.path.join(ROOT, name), 'rb') as f:
        return f.read()


@pytest.mark.parametrize('name', ['receiver.py', 'storage.py'])
def test_script_has_env_python3_shebang(name):
    """The script starts with `#!/usr/bin/env python3` and a plain newline."""
    assert read_bytes(name).startswith(b'#!/usr/bin/env python3\n')


@pytest.mark.parametrize('name', ['receiver.py', 'storage.py'])
def test_script_has_no_carriage_returns(name):
    """The script has Unix line ends (a CR after the shebang breaks `env python3`)."""
    assert b'\r' not in read_bytes(name)


@pytest.mark.parametrize('name', ['receiver.py', 'storage.py'])
def test_script_is_committed_executable(name):
    """git records the script with mode 100755, so a checkout can run it as CGI."""
    out = subprocess.run(['git', 'ls-files', '-s', '--', name], cwd=ROOT,
                         stdout=subprocess.PIPE, check=True).stdout.decode()
    assert out.split()[0] == '100755'
