"""Access control under attack: the token right, wrong, missing, non-ASCII, of another length,
in the path and in a parameter; allowlists of IPv4, IPv6 and networks; X-Forwarded-For forged
by the caller. The secret is never in the database files, a log line or an answer; the files
are 0600 in a 0700 folder whatever the umask.
"""
import os
import socket
import sqlite3
import stat
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import DONE, RETRY, rows
from support import Server, http_request, run_cgi

SECRET = 'Kh0a-bí-mật_Đà-Nẵng-9f3a'       # non-ASCII: the gateway's URL carries it as UTF-8
SECRET_UTF8 = SECRET.encode('utf-8')
SECRET_URL = quote(SECRET, safe='')
ASCII_SECRET = 'Zq81-k3y_7c2e'
PUSH = 'guid={guid}&phone=0912345678&message=xin+ch%C3%A0o'
CP1258_MESSAGE = 'message=C%E1m+%F5n'      # 'Cám ơn' as Windows-1258 bytes: not UTF-8
HYPOTHESIS = settings(max_examples=100, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])


def push_query(guid):
    return PUSH.format(guid=guid)


def counted(figures, n=1):
    figures['requests'] += n


# -- The token ---------------------------------------------------------------------------------

TOKEN_CASES = [
    # (what, path, extra query, expected HTTP status)
    ('right, as the last path segment', '/fibosms/' + SECRET_URL, '', 200),
    ('right, with a trailing slash', '/fibosms/' + SECRET_URL + '/', '', 200),
    ('right, as the whole path', '/' + SECRET_URL, '', 200),
    ('right, as a parameter', '/fibosms', 'token=' + SECRET_URL, 200),
    ('right, as a legacy %u parameter',
     '/fibosms', 'token=' + ''.join('%%u%04X' % ord(c) for c in SECRET), 200),
    ('right in a parameter, wrong in the path', '/fibosms/nope', 'token=' + SECRET_URL, 200),
    ('missing', '/fibosms', '', 403),
    ('empty parameter', '/fibosms/', 'token=', 403),
    ('wrong by one character', '/fibosms/' + SECRET_URL[:-1] + 'b', '', 403),
    ('shorter: a prefix', '/fibosms/' + quote(SECRET[:-1], safe=''), '', 403),
    ('longer: the secret and more', '/fibosms/' + SECRET_URL + 'a', '', 403),
    ('twice over', '/fibosms/' + SECRET_URL * 2, '', 403),
    ('of another case', '/fibosms/' + quote(SECRET.upper(), safe=''), '', 403),
    ('not the last path segment', '/fibosms/' + SECRET_URL + '/more', '', 403),
    ('in another parameter', '/fibosms', 'key=' + SECRET_URL, 403),
    ('as Latin-1 bytes, not UTF-8', '/fibosms/' + quote(SECRET.encode('latin-1', 'replace')),
     '', 403),
    ('without its accents', '/fibosms/Kh0a-bi-mat_Da-Nang-9f3a', '', 403),
    ('right, but given twice', '/fibosms', 'token=%s&token=%s' % (SECRET_URL, SECRET_URL), 400),
]


@pytest.mark.parametrize('path, extra, code', [c[1:] for c in TOKEN_CASES],
                         ids=[c[0] for c in TOKEN_CASES])
def test_token_decides_the_answer(make_client, db, figures, path, extra, code):
    """The secret lets a push in only as the last path segment or the token parameter."""
    client = make_client(token=SECRET)
    query = '&'.join(q for q in (extra, push_query('t')) if q)
    res = client.get(path + '?' + query, status=code, expect_errors=code != 200)
    counted(figures)
    assert res.body == (DONE if code == 200 else RETRY)
    assert len(rows(db)) == (1 if code == 200 else 0)


def test_non_ascii_token_parameter_is_accepted_in_a_windows_1258_push(make_client, db,
                                                                      figures):
    """The right secret as a parameter lets in a push whose message is not UTF-8."""
    client = make_client(token=SECRET)
    query = 'token=%s&%s&phone=1&guid=cp1258' % (SECRET_URL, CP1258_MESSAGE)
    res = client.get('/fibosms?' + query, expect_errors=True)
    counted(figures)
    assert (res.status_int, res.body) == (200, DONE), res.errors
    [row] = rows(db)
    assert row['message'].encode(row['charset']) == b'C\xe1m \xf5n'


@HYPOTHESIS
@given(offered=st.one_of(st.text(max_size=40), st.sampled_from(
    [SECRET[:-1], SECRET + ' ', ' ' + SECRET, SECRET.lower(), SECRET + '\x00',
     SECRET.replace('í', 'i'), SECRET * 2, ''])),
    where=st.sampled_from(['path', 'parameter']))
def test_any_other_token_is_403_and_stores_nothing(make_client, db, figures, offered, where):
    """Whatever else is offered, in the path or as a parameter, the push is refused."""
    if offered == SECRET:
        return
    client = make_client(token=SECRET)
    offered_url = quote(offered, safe='')
    if where == 'path':
        url = '/fibosms/%s?%s' % (offered_url, push_query('h'))
    else:
        url = '/fibosms?token=%s&%s' % (offered_url, push_query('h'))
    res = client.get(url, status=403, expect_errors=True)
    counted(figures)
    figures['hostile_inputs'] += 1
    assert res.body == RETRY and rows(db) == []


# -- The allowlist and X-Forwarded-For ---------------------------------------------------------

ALLOW_CASES = [
    # (allow, REMOTE_ADDR, allowed?)
    ('203.0.113.5', '203.0.113.5', True),
    ('203.0.113.5', '203.0.113.6', False),
    ('203.0.113.0/24', '203.0.113.254', True),
    ('203.0.113.0/24', '203.0.114.1', False),
    ('203.0.113.5', '::ffff:203.0.113.5', True),        # IPv4 on a dual-stack socket
    ('203.0.113.5', '::ffff:203.0.113.6', False),
    ('2001:db8::1', '2001:db8::1', True),
    ('2001:db8::1', '2001:DB8:0:0:0:0:0:1', True),       # the same address, written out
    ('2001:db8::1', '2001:db8::2', False),
    ('2001:db8::/32', '2001:db8:ffff::9', True),
    ('2001:db8::/32', '2001:db9::9', False),
    ('fe80::/10', 'fe80::1%eth0', True),                 # a zone id is not part of it
    ('198.51.100.7, 2001:db8::/48', '2001:db8:0:1::1', True),
    ('198.51.100.7, 2001:db8::/48', '198.51.100.8', False),
    ('0.0.0.0/0', '2001:db8::1', False),                 # all of IPv4 is no IPv6
    ('203.0.113.5', '', False),
    ('203.0.113.5', 'unknown', False),
    ('203.0.113.5', '203.0.113.5.evil', False),
    ('203.0.113.5', '203.0.113.5, 10.0.0.1', False),
]


@pytest.mark.parametrize('allow, remote, allowed', ALLOW_CASES)
def test_allowlist_decides_the_answer(make_client, db, figures, allow, remote, allowed):
    """Only an address inside the allowlist (IPv4, IPv6, networks) may push."""
    client = make_client(allow=allow, extra_environ={'REMOTE_ADDR': remote})
    code = 200 if allowed else 403
    res = client.get('/?' + push_query('a'), status=code, expect_errors=not allowed)
    counted(figures)
    assert res.body == (DONE if allowed else RETRY)
    assert len(rows(db)) == (1 if allowed else 0)


FORWARDED_CASES = [
    # (trusted proxies, REMOTE_ADDR, X-Forwarded-For, allowed?) with allow=203.0.113.5
    (None, '198.51.100.9', '203.0.113.5', False),        # forged by the caller: ignored
    (None, '203.0.113.5', '198.51.100.9', True),         # ignored the other way too
    ('127.0.0.1', '198.51.100.9', '203.0.113.5', False),  # not from the trusted proxy
    ('127.0.0.1', '127.0.0.1', '203.0.113.5', True),      # the proxy names the caller
    ('127.0.0.1', '127.0.0.1', '198.51.100.9', False),
    ('127.0.0.1', '127.0.0.1', '203.0.113.5, 198.51.100.9', False),  # leftmost is forged
    ('127.0.0.1', '127.0.0.1', '198.51.100.9, 203.0.113.5', True),
    ('127.0.0.1, 10.0.0.0/8', '127.0.0.1', '203.0.113.5, 10.1.2.3', True),  # two proxies
    ('127.0.0.1', '127.0.0.1', 'garbage', False),
    ('127.0.0.1', '127.0.0.1', '', False),                # the proxy itself is not allowed
    ('127.0.0.1', '127.0.0.1', ' , ,', False),
]


@pytest.mark.parametrize('trusted, remote, forwarded, allowed', FORWARDED_CASES)
def test_x_forwarded_for_counts_only_from_a_trusted_proxy(make_client, db, figures, trusted,
                                                          remote, forwarded, allowed):
    """X-Forwarded-For names the caller only when a trusted proxy sent it, nearest hop first."""
    client = make_client(allow='203.0.113.5', trusted_proxies=trusted,
                         extra_environ={'REMOTE_ADDR': remote})
    code = 200 if allowed else 403
    res = client.get('/?' + push_query('x'), headers={'X-Forwarded-For': forwarded},
                     status=code, expect_errors=not allowed)
    counted(figures)
    assert res.body == (DONE if allowed else RETRY)
    assert len(rows(db)) == (1 if allowed else 0)


@HYPOTHESIS
@given(forwarded=st.text(st.characters(max_codepoint=255, blacklist_characters='\r\n'),
                         max_size=80))
def test_forged_x_forwarded_for_never_lets_a_stranger_in(make_client, db, figures, forwarded):
    """Without a trusted proxy, no X-Forwarded-For whatever lets a stranger push."""
    client = make_client(allow='203.0.113.0/24, 2001:db8::/32',
                         extra_environ={'REMOTE_ADDR': '198.51.100.9'})
    res = client.get('/?' + push_query('f'), headers={'X-Forwarded-For': forwarded},
                     status=403, expect_errors=True)
    counted(figures)
    figures['hostile_inputs'] += 1
    assert res.body == RETRY and rows(db) == []


# -- The secret stays secret -------------------------------------------------------------------

def secret_forms():
    """The secret as it could leak: text, UTF-8 and percent-encoded, either case."""
    return [SECRET, SECRET_URL, SECRET_URL.lower(), ASCII_SECRET]


def assert_no_secret(where, text):
    for form in secret_forms():
        assert form not in text, 'the secret is in %s' % where


def database_bytes(db):
    """The bytes of the database and of its -wal, -shm and -journal files, as text."""
    data = b''
    for suffix in ('', '-wal', '-shm', '-journal'):
        if os.path.exists(db + suffix):
            with open(db + suffix, 'rb') as f:
                data += f.read()
    return data.decode('latin-1') + data.decode('utf-8', 'replace')


LEAKY_REQUESTS = [
    '/fibosms/{s}?' + push_query('leak-1'),
    '/fibosms?token={s}&' + push_query('leak-2') + '&note=1',
    '/fibosms?token={s}&token={s}&' + push_query('leak-3'),
    '/fibosms/{s}x?' + push_query('leak-4'),
    '/fibosms?tok%65n={s}&' + push_query('leak-5'),
    '/fibosms/{s}?guid=leak-6',
    '/fibosms/{s}?phone=1&guid=' + 'g' * 200,
]


def test_secret_is_in_no_database_file_log_line_or_answer(make_client, db, figures):
    """Pushes with the secret, right and wrong: it is in no file, log line or answer."""
    client = make_client(token=SECRET)
    held = None
    try:
        for template in LEAKY_REQUESTS:
            res = client.get(template.format(s=SECRET_URL), expect_errors=True)
            counted(figures)
            assert res.status_int != 500
            assert_no_secret('a log line', res.errors)
            assert_no_secret('an answer', res.body.decode('latin-1'))
            if held is None and os.path.exists(db):
                held = sqlite3.connect(db)     # an open reader keeps the -wal file in place
                held.execute('SELECT count(*) FROM messages').fetchone()
        assert os.path.exists(db + '-wal')
        assert_no_secret('the database', database_bytes(db))
    finally:
        if held is not None:
            held.close()
    assert {r['guid'] for r in rows(db)} == {'leak-1', 'leak-2', 'leak-5'}
    assert_no_secret('the database', database_bytes(db))


def test_secret_is_in_no_line_of_the_threaded_servers_error_output(tmp_path, figures):
    """The server's stderr, for good, bad and unreadable requests, never shows the secret."""
    db = str(tmp_path / 'data' / 'messages.sqlite3')
    with Server(db, str(tmp_path / 'server.log'), {'FIBOSMS_TOKEN': ASCII_SECRET}) as server:
        for template in LEAKY_REQUESTS:
            status, body = http_request(server.port, 'GET', template.format(s=ASCII_SECRET))
            assert status is not None and status != 500
            assert ASCII_SECRET.encode() not in body
        for raw in (b'GET /fibosms/%s?guid=r&phone=1 HTTP/9.9\r\n\r\n',
                    b'GET /fibosms/%s?guid=r&phone=1 bad words HTTP/1.0\r\n\r\n',
                    b'GET /fibosms/%s?guid=r&phone=1 HTTP/1.0\r\nX-A: b\r\n' + b'X: y\r\n' * 101
                    + b'\r\n'):
            sock = socket.create_connection(('127.0.0.1', server.port), timeout=10)
            try:
                sock.sendall(raw.replace(b'%s', ASCII_SECRET.encode()))
                sock.shutdown(socket.SHUT_WR)
                answer = sock.recv(65536)
            finally:
                sock.close()
            assert ASCII_SECRET.encode() not in answer, answer
        counted(figures, len(LEAKY_REQUESTS) + 3)
        log = server.log()
    assert 'fibosms-receiver: answered 1 (HTTP 403)' in log    # the log is written, not the secret
    assert_no_secret('the server log', log)
    assert_no_secret('the database', database_bytes(db))


def test_secret_is_in_no_line_of_a_cgi_processes_error_output(tmp_path, figures):
    """A CGI process refusing a wrong token or failing storage keeps the secret to itself."""
    db = str(tmp_path / 'data' / 'messages.sqlite3')
    env = {'FIBOSMS_TOKEN': ASCII_SECRET}
    for path, db_path in (('/' + ASCII_SECRET + 'x', db), ('/' + ASCII_SECRET, db),
                          ('/' + ASCII_SECRET, '/proc/no/such/db.sqlite3')):
        code, body, err = run_cgi(db_path, push_query('cgi'),
                                  extra=dict(env, PATH_INFO=path))
        counted(figures)
        assert code in (200, 403) and body in (DONE, RETRY)
        assert_no_secret('CGI stderr', err)
    assert_no_secret('the database', database_bytes(db))


# -- File modes ------------------------------------------------------------------------------

@pytest.mark.parametrize('umask', [0o000, 0o022, 0o077])
def test_database_files_are_0600_in_a_0700_folder_whatever_the_umask(tmp_path, figures, umask):
    """A CGI process with any umask makes the folder 0700 and every database file 0600."""
    db = str(tmp_path / 'data' / 'messages.sqlite3')
    old = os.umask(umask)       # the CGI process inherits it, as from Apache
    try:
        code, _, err = run_cgi(db, push_query('m-1'))
        assert code == 200, err
        reader = sqlite3.connect(db)          # an open reader keeps -wal and -shm in place
        try:
            reader.execute('BEGIN')
            reader.execute('SELECT count(*) FROM messages').fetchone()
            code, _, err = run_cgi(db, push_query('m-2'))
            assert code == 200, err
            names = sorted(os.listdir(os.path.dirname(db)))
            modes = {n: stat.S_IMODE(os.stat(os.path.join(os.path.dirname(db), n)).st_mode)
                     for n in names}
        finally:
            reader.close()
    finally:
        os.umask(old)
    counted(figures, 2)
    assert stat.S_IMODE(os.stat(os.path.dirname(db)).st_mode) == 0o700
    assert 'messages.sqlite3-wal' in modes and 'messages.sqlite3-shm' in modes
    assert modes == dict.fromkeys(names, 0o600)
