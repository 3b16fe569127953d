"""receiver.serve_cgi, the CGI gateway, against wsgiref.handlers.CGIHandler as the oracle: the
same request (environment bytes and stdin) to a real process of each gives the same bytes out,
and the same WSGI environ, non-ASCII paths and odd bytes included."""
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import post
import receiver
from conftest import DONE, RETRY, ROOT

GATEWAYS = {
    'serve_cgi': 'receiver.serve_cgi(app)',
    'CGIHandler': 'from wsgiref.handlers import CGIHandler; CGIHandler().run(app)',
}
TOKEN = 'gateway-secret-of-the-tests'
# An app that answers with the environ it was given, but the objects that differ by nature
# (streams), wsgiref's optional wsgi.file_wrapper, which serve_cgi does not offer, and
# serve_cgi's own fibosms.ends (the process ends after the push: storage.Once).
ENVIRON_APP = '''
def app(environ, start_response):
    shown = {k: v for k, v in environ.items()
             if k not in ('wsgi.input', 'wsgi.errors', 'wsgi.file_wrapper', 'fibosms.ends')}
    body = repr(sorted(shown.items())).encode('utf-8', 'backslashreplace')
    start_response('200 OK', [('Content-Type', 'text/plain'),
                              ('Content-Length', str(len(body)))])
    return [body]
'''


def run_gateway(gateway, app, request, db, body=b'', locale='C.UTF-8'):
    """One CGI process of `gateway` serving `app` ('receiver' or 'environ'): (stdout, stderr).

    `request` holds the request's variables as bytes, as a web server passes them.
    """
    if app == 'receiver':
        make = 'app = receiver.make_app(db=%r, token=%r)' % (db, TOKEN)
    else:
        make = ENVIRON_APP
    code = 'import sys; sys.path.insert(0, %r); import receiver\n%s\n%s' % (
        ROOT, make, GATEWAYS[gateway])
    env = {b'PATH': b'/usr/bin:/bin', b'LC_ALL': locale.encode(), b'GATEWAY_INTERFACE': b'CGI/1.1',
           b'SERVER_NAME': b'sms.example.com', b'SERVER_PORT': b'443',
           b'SERVER_PROTOCOL': b'HTTP/1.1', b'REMOTE_ADDR': b'192.0.2.10',
           b'SCRIPT_NAME': b'/cgi-bin/receiver.py', b'REQUEST_METHOD': b'GET'}
    env.update(request)
    if body:
        env[b'CONTENT_LENGTH'] = str(len(body)).encode()
    for name in (b'PYTHONPATH', b'LD_LIBRARY_PATH'):    # an old SQLite under test stays in
        if name in os.environb:
            env[name] = os.environb[name]
    done = subprocess.run([sys.executable, '-c', code], env=env, input=body,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr


PUSH = b'guid=g-1&phone=0912345678&message=Xin+ch%C3%A0o'
REQUESTS = {
    'push': {b'QUERY_STRING': PUSH, b'PATH_INFO': b'/' + TOKEN.encode()},
    'retry-over-https': {b'QUERY_STRING': PUSH, b'PATH_INFO': b'/' + TOKEN.encode(),
                         b'HTTPS': b'on'},
    'post-form': {b'REQUEST_METHOD': b'POST', b'PATH_INFO': b'/' + TOKEN.encode(),
                  b'CONTENT_TYPE': b'application/x-www-form-urlencoded'},
    'wrong-token': {b'QUERY_STRING': PUSH, b'PATH_INFO': b'/wrong'},
    'no-guid': {b'QUERY_STRING': b'phone=0912345678', b'PATH_INFO': b'/' + TOKEN.encode()},
    'method': {b'REQUEST_METHOD': b'DELETE', b'PATH_INFO': b'/' + TOKEN.encode()},
    'utf-8-path': {b'QUERY_STRING': PUSH, b'PATH_INFO': '/Đà Nẵng/'.encode() + TOKEN.encode()},
    'latin-1-query': {b'QUERY_STRING': b'guid=g-2&phone=0912345678&message=caf\xe9',
                      b'PATH_INFO': b'/' + TOKEN.encode()},
}


@pytest.mark.parametrize('name', sorted(REQUESTS))
def test_serve_cgi_answers_as_cgihandler(tmp_path, name):
    """Status line, headers and body of each request are byte for byte CGIHandler's."""
    body = PUSH if name == 'post-form' else b''
    outs = {gateway: run_gateway(gateway, 'receiver', REQUESTS[name],
                                 str(tmp_path / gateway / 'messages.sqlite3'), body)[0]
            for gateway in GATEWAYS}
    assert outs['serve_cgi'] == outs['CGIHandler']
    assert outs['serve_cgi'].startswith(b'Status: ')
    assert outs['serve_cgi'].endswith(RETRY if name in ('wrong-token', 'no-guid', 'method')
                                      else DONE)


@pytest.mark.parametrize('locale', ['C.UTF-8', 'C'])
def test_serve_cgi_environ_transcoded_as_cgihandler(tmp_path, locale):
    """Request variables carry their bytes as latin-1 text, the others stay as Python read
    them, under a UTF-8 and an ASCII locale: the same environ as CGIHandler's."""
    path = '/Đà Nẵng/😊'.encode() + b'/\xff'
    request = {b'PATH_INFO': path, b'QUERY_STRING': b'a=%C3\xe9',
               b'HTTP_X_NOTE': 'Tôi'.encode(), b'REDIRECT_QUERY_STRING': b'q=\xc3\xa0',
               b'SSL_CLIENT_S_DN': 'CN=Đà'.encode(), b'HTTPS': b'yes',
               b'FIBOSMS_DB': '/srv/dữ liệu/messages.sqlite3'.encode()}
    outs = {gateway: run_gateway(gateway, 'environ', request, None, locale=locale)[0]
            for gateway in GATEWAYS}
    assert outs['serve_cgi'] == outs['CGIHandler']
    shown = outs['serve_cgi'].partition(b'\r\n\r\n')[2].decode('utf-8')
    assert repr(('PATH_INFO', path.decode('latin-1'))) in shown
    assert "('wsgi.url_scheme', 'https')" in shown
    assert "('wsgi.run_once', True)" in shown


def test_cgi_push_imports_only_what_it_needs(tmp_path):
    """A push as CGI, with a secret and no allowlist or hook, imports no module it does not
    need (sys.modules as the process ends; serve_cgi runs atexit's functions before
    os._exit): not re, not wsgiref, not hmac, and of the project's modules only receiver and
    storage."""
    env = {'PATH': '/usr/bin:/bin', 'GATEWAY_INTERFACE': 'CGI/1.1', 'REQUEST_METHOD': 'GET',
           'QUERY_STRING': PUSH.decode(), 'REMOTE_ADDR': '192.0.2.1', 'PATH_INFO': '/' + TOKEN,
           'FIBOSMS_TOKEN': TOKEN, 'FIBOSMS_DB': str(tmp_path / 'data' / 'messages.sqlite3'),
           'HOME': str(tmp_path)}
    env.update({k: v for k, v in os.environ.items() if k in ('LD_LIBRARY_PATH',)})
    code = ('import atexit, sys\n'
            'atexit.register(lambda: sys.stderr.write("MODULES " + " ".join(sys.modules)))\n'
            'path = %r\n'
            'exec(compile(open(path).read(), path, "exec"), {"__name__": "__main__",'
            ' "__file__": path})' % os.path.join(ROOT, 'receiver.py'))
    done = subprocess.run([sys.executable, '-S', '-c', code], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert done.stdout.endswith(DONE), done.stderr
    modules = done.stderr.decode().rpartition('MODULES ')[2].split()
    assert 'storage' in modules and 'sqlite3' in modules
    for name in ('re', 'wsgiref', 'threading', 'json', 'ipaddress', 'hmac', 'hashlib',
                 'traceback', 'addresses', 'post', 'hooks', 'connections', 'forward',
                 'commands', 'smallserver'):
        assert name not in modules, name


def run_cgi_on_socket(tmp_path, env, body=None):
    """receiver.py's CGI gateway with one socket as stdin and stdout, as Apache's mod_cgid
    gives it: `body` sent (then end of file), or, if None, never. (process, our socket end)"""
    code = ('import sys; sys.path.insert(0, %r); import receiver\n'
            'receiver.serve_cgi(receiver.make_app(db=%r, token=%r))'
            % (ROOT, str(tmp_path / 'messages.sqlite3'), TOKEN))
    env = dict({'PATH': '/usr/bin:/bin', 'GATEWAY_INTERFACE': 'CGI/1.1',
                'REQUEST_METHOD': 'POST', 'PATH_INFO': '/wrong', 'REMOTE_ADDR': '192.0.2.10',
                'CONTENT_TYPE': 'application/x-www-form-urlencoded'}, **env)
    server, script = socket.socketpair()
    server.settimeout(30)
    proc = subprocess.Popen([sys.executable, '-c', code], stdin=script, stdout=script,
                            stderr=subprocess.PIPE, env=env)
    script.close()
    if body is not None:
        threading.Thread(target=send_body, args=(server, body)).start()
    return proc, server


def send_body(sock, body):
    try:
        sock.sendall(body)
        sock.shutdown(socket.SHUT_WR)   # as mod_cgid does once the body is written
    except OSError:  # the script is gone
        pass


def answer_until_end(proc, server):
    """What the script wrote, up to its end (a reset raises ConnectionResetError)."""
    with server:
        answer = b''.join(iter(lambda: server.recv(65536), b''))
        assert proc.wait(30) == 0, proc.stderr.read()
        proc.stderr.close()
    return answer


@pytest.mark.parametrize('framing', ['Content-Length', 'chunked'])
def test_serve_cgi_reads_away_a_body_it_refused_unread(tmp_path, framing):
    """A POST refused before its body is read (a wrong secret) still has its body read, at the
    end: a script exiting with input unread resets the socket mod_cgid gives it, which loses
    the answer (AH00574). Apache passes a chunked body on without CONTENT_LENGTH."""
    body = b'message=x&' * 10000
    env = ({'CONTENT_LENGTH': str(len(body))} if framing == 'Content-Length'
           else {'HTTP_TRANSFER_ENCODING': 'chunked'})
    answer = answer_until_end(*run_cgi_on_socket(tmp_path, env, body))
    assert answer.startswith(b'Status: 403 Forbidden\r\n') and answer.endswith(RETRY), answer


def test_serve_cgi_stops_reading_away_a_body_that_never_comes(tmp_path):
    """A POST announcing a body it never sends, refused: the answer is written at once, and
    the process then waits READ_AWAY_SECONDS for the body, not as long as the client likes."""
    proc, server = run_cgi_on_socket(tmp_path, {'CONTENT_LENGTH': '100000'})
    with server:
        answer = b''
        while not answer.endswith(RETRY):
            answer += server.recv(65536) or RETRY   # (an end of file fails below)
        answered = time.monotonic()
        assert proc.poll() is None      # waiting for the body, its answer given
        assert proc.wait(30) == 0, proc.stderr.read()
        waited = time.monotonic() - answered
        proc.stderr.close()
    assert answer.startswith(b'Status: 403 Forbidden\r\n') and answer.endswith(RETRY), answer
    assert post.READ_AWAY_SECONDS - 0.5 < waited < post.READ_AWAY_SECONDS + 10
