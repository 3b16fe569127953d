"""A stand-in for the business's application: a real HTTP server on 127.0.0.1 that records
every request and answers as a test sets it (a status, a redirect, a hang, a trickle, a huge
body), over http or, given a certificate, https. Also: php -S serving deploy/consumer.php.

This module holds no tests.
"""
import http.server
import os
import socket
import socketserver
import subprocess
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONSUMER = os.path.join(ROOT, 'deploy', 'consumer.php')
START_TIMEOUT = 15.0


class Request:
    def __init__(self, method, path, headers, body):
        self.method, self.path, self.headers, self.body = method, path, headers, body

    def __repr__(self):
        return '<Request %s %s %r>' % (self.method, self.path, self.body[:100])


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


class Application:
    """Application(cert=None) listening at .url; set .status, .body, .headers (a list),
    .hang (seconds to wait before answering, cut short by .release), .trickle (send the
    status line a byte at a time, 10 a second) or .huge (a body of that many bytes).
    .requests holds what came in; .arrived is set at each request. stop() ends it."""

    def __init__(self, cert=None):
        self.status, self.body, self.headers = 204, b'', []
        self.hang, self.trickle, self.huge = 0.0, False, 0
        self.requests = []
        self.arrived = threading.Event()
        self.release = threading.Event()
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                app.handle(self)

            do_GET = do_PUT = do_POST

            def log_message(self, format, *args):
                pass

        self.server = Server(('127.0.0.1', 0), Handler)
        scheme = 'http'
        if cert:
            import ssl
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*cert)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = 'https'
        self.port = self.server.server_address[1]
        self.url = '%s://127.0.0.1:%d/hook' % (scheme, self.port)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def handle(self, handler):
        length = int(handler.headers.get('Content-Length') or 0)
        body = handler.rfile.read(length)
        self.requests.append(Request(handler.command, handler.path, dict(handler.headers), body))
        self.arrived.set()
        if self.hang:
            self.release.wait(self.hang)
        try:
            if self.trickle:
                deadline = time.monotonic() + 30
                for byte in b'HTTP/1.1 200 OK\r\n' * 50:
                    if self.release.is_set() or time.monotonic() > deadline:
                        break
                    handler.wfile.write(bytes([byte]))
                    handler.wfile.flush()
                    time.sleep(0.1)
                return
            handler.send_response(self.status)
            for name, value in self.headers:
                handler.send_header(name, value)
            size = self.huge or len(self.body)
            handler.send_header('Content-Length', str(size))
            handler.end_headers()
            if self.huge:
                chunk = b'x' * 65536
                for _ in range(0, self.huge, len(chunk)):
                    handler.wfile.write(chunk)
            else:
                handler.wfile.write(self.body)
        except OSError:     # the receiver hung up: what a bounded reader does
            pass

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def wait_for_port(port, process, explain):
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError('exited with %s: %s' % (process.returncode, explain()))
        try:
            socket.create_connection(('127.0.0.1', port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise RuntimeError('not listening after %g s: %s' % (START_TIMEOUT, explain()))
            time.sleep(0.05)


class Consumer:
    """deploy/consumer.php served by Debian's php-cli (`php -S 127.0.0.1:PORT`), with the
    secret and database in its environment, as SetEnv would give them. .log() is its stderr
    (the error log, in the file log_path); .url its address. With default_db, the page is
    left to choose its database (`db` is where it should land). Raises, never skips, when php
    cannot start."""

    def __init__(self, secret, db, log_path, port=None, script=CONSUMER, default_db=False):
        self.db, self.log_path, self.port = db, log_path, port or free_port()
        self.url = 'http://127.0.0.1:%d/consumer.php' % self.port
        env = {'PATH': os.environ.get('PATH', '/usr/bin:/bin')}
        if secret is not None:
            env['FIBOSMS_FORWARD_SECRET'] = secret
        if not default_db:
            env['FIBOSMS_CONSUMER_DB'] = db
        with open(self.log_path, 'wb') as log:
            try:
                self.process = subprocess.Popen(
                    ['php', '-S', '127.0.0.1:%d' % self.port, '-t', os.path.dirname(script),
                     script], env=env, stdout=subprocess.DEVNULL, stderr=log, cwd='/')
            except FileNotFoundError:
                raise RuntimeError('php is not installed (apt-get install php-cli php-sqlite3)')
        wait_for_port(self.port, self.process, self.log)

    def log(self):
        with open(self.log_path, 'rb') as f:
            return f.read().decode('utf-8', 'replace')

    def rows(self, table):
        import sqlite3
        if not os.path.exists(self.db):
            return []
        conn = sqlite3.connect(self.db, timeout=10)
        try:
            return conn.execute('SELECT * FROM %s' % table).fetchall()
        finally:
            conn.close()

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
