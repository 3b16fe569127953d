"""The small server of ``python3 receiver.py``: wsgiref's, made fit to face clients itself.

Loaded only when receiver.py runs as that server, never for a CGI push or under mod_wsgi.

One thread reads the request line and headers of every connection, at most MAX_HEADER_BYTES
within HEADER_TIMEOUT, so a slow client holds a few KiB and no thread; WORKERS threads run the
requests whose headers are in, with BODY_TIMEOUT for the body. Over MAX_CONNECTIONS open at
once, or MAX_PER_ADDRESS from one address (a front end on this machine aside), the next
connection is answered at once, 200 <Status>1</Status>: try again. One request per connection.
On TCP, any user of this machine can connect from the front end's address too, unlimited:
behind a front end, serve the socket of deploy/fibosms-receiver.socket (systemd_socket), which
only the front end's user may open.

Headers named with anything but letters, digits and '-' are dropped: wsgiref would read
``X_Forwarded_For`` as X-Forwarded-For (PEP 3333), and nginx and Apache drop them too.

Its own refusals are receiver.py's <Status>1</Status> with a status line too: 200 where a retry
can succeed, as receiver.TRY_AGAIN (headers too slow, too many connections); 400 (unreadable,
blank or cut-off request line, a folded header line, Content-Length, -Type or Host twice), 411
(chunked body), 414 or 431 (over MAX_HEADER_BYTES, or over MAX_HEADERS headers), 505 (HTTP/2
and later). Each logs one line on stderr naming the reason. The request log line shows ``/***`` for the path, whatever its spelling,
and never the query string.
"""
import argparse
import collections
import io
import os
import queue
import selectors
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

# The two documents of the protocol, as in receiver.py: the server's own refusals are answers
# of the page too.
RETRY = b'<Status>1</Status>'
CONTENT_TYPE = 'text/xml; charset=utf-8'

LISTEN_BACKLOG = 128            # connections the kernel holds until they are accepted
MAX_CONNECTIONS = 512           # open at once (under the usual 1024 file descriptors): the
                                # next one is answered (try again) at once
MAX_PER_ADDRESS = 16            # open at once from one address, but for a front end's:
FRONT_END_ADDRESSES = ('127.0.0.1', '::1', '::ffff:127.0.0.1')
WORKERS = 16                    # threads running requests whose headers are all in
HEADER_TIMEOUT = 10.0           # seconds from connecting to the end of the headers, else 1
BODY_TIMEOUT = 10.0             # seconds for the body once the headers are in, else 1
STOP_TIMEOUT = 5.0              # seconds a stopping server waits for requests in hand
MAX_HEADER_BYTES = 32 * 1024    # request line and headers together, else 414 or 431
MAX_HEADERS = 50                # header lines, else 431
HEADER_NAME_CHARS = ('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'
                     '0123456789-')            # a header named otherwise is dropped
SINGLE_HEADERS = ('Content-Length', 'Content-Type', 'Host')    # twice: 400


def make_server(host, port, app, sock=None):
    """A server of `app` on `host`:`port`, or on `sock`, a listening socket (systemd's): one
    thread reads every connection's request line and headers, WORKERS threads run the
    requests whose headers are in, and every refusal is a Status document."""
    if sock is None:
        server = ReceiverServer((host, port), RequestHandler)
    else:
        server = ReceiverServer((host, port), RequestHandler, bind_and_activate=False)
        server.socket.close()
        server.socket, server.server_name, server.server_port = sock, host, port
        server.setup_environ()
        server.server_activate()
    server.set_app(app)
    return server


def systemd_socket():
    """The socket systemd passed (sd_listen_fds(3): file descriptor 3, LISTEN_PID this
    process), e.g. deploy/fibosms-receiver.socket's; else None."""
    if os.environ.get('LISTEN_PID') != str(os.getpid()) or os.environ.get('LISTEN_FDS') != '1':
        return None
    for name in ('LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES'):   # not for child processes
        os.environ.pop(name, None)
    probe = socket.fromfd(3, socket.AF_INET, socket.SOCK_STREAM)
    family = probe.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)  # 3.6 cannot tell it itself
    probe.close()
    sock = socket.fromfd(3, family, socket.SOCK_STREAM)
    os.close(3)
    return sock


class ReceiverServer(WSGIServer):
    request_queue_size = LISTEN_BACKLOG

    def get_request(self):
        request, client_address = self.socket.accept()
        if self.socket.family == socket.AF_UNIX:
            # The unit's socket only the front end's user may open (SocketUser=, mode 600):
            # its connections are the front end's, as from 127.0.0.1 on TCP, where any user
            # of this machine could connect from that address too.
            client_address = ('127.0.0.1', 0)
        return request, client_address

    def server_activate(self):
        WSGIServer.server_activate(self)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.per_address = collections.Counter()   # open connections of each client
        self.count_lock = threading.Lock()
        self.work = queue.Queue()
        self.reader = HeaderReader(self)
        self.workers = [threading.Thread(target=self.work_loop, name='fibosms-worker',
                                         daemon=True) for _ in range(WORKERS)]
        for thread in [self.reader.thread] + self.workers:
            thread.start()

    def process_request(self, request, client_address):
        """Called by serve_forever for each accepted connection."""
        address = client_address[0]
        with self.count_lock:
            crowded = (self.per_address[address] >= MAX_PER_ADDRESS
                       and address not in FRONT_END_ADDRESSES)
            if not crowded:
                self.per_address[address] += 1
        if crowded:   # one client may not take every slot: the gateway's push gets one
            refuse(request, 200, 'more than %d connections from one address'
                   % MAX_PER_ADDRESS, client_address)
            return
        if not self.slots.acquire(blocking=False):
            self.leave(client_address, slot=False)
            refuse(request, 200, 'more than %d connections' % MAX_CONNECTIONS,
                   client_address)
            return
        self.reader.add(request, client_address)

    def leave(self, client_address, slot=True):
        """A connection counted by process_request is closed."""
        with self.count_lock:
            self.per_address[client_address[0]] -= 1
            if not self.per_address[client_address[0]]:
                del self.per_address[client_address[0]]
        if slot:
            self.slots.release()

    def work_loop(self):
        while True:
            item = self.work.get()
            if item is None:
                return
            request, client_address, ahead = item
            try:
                RequestHandler((request, ahead), client_address, self)
            except OSError:   # the client went away
                pass
            except Exception:
                self.handle_error(request, client_address)
            finally:
                drain(request)
                self.shutdown_request(request)
                self.leave(client_address)

    def server_close(self):
        WSGIServer.server_close(self)
        if getattr(self, 'reader', None) is not None:
            self.reader.close()
            for _ in self.workers:
                self.work.put(None)
            deadline = time.monotonic() + STOP_TIMEOUT   # let answers in hand finish
            for thread in self.workers:
                thread.join(max(0.0, deadline - time.monotonic()))

class HeaderReader:
    """One thread that reads the request line and headers of every new connection, at
    most MAX_HEADER_BYTES within HEADER_TIMEOUT, and then queues it for the workers; so
    a client that sends slowly holds a few KiB here, not a thread."""

    def __init__(self, server):
        self.server = server
        self.selector = selectors.DefaultSelector()
        self.incoming = queue.Queue()
        self.deadlines = collections.deque()   # (deadline, socket): in order, as all
                                               # have the same timeout
        self.wake_in, self.wake_out = socket.socketpair()
        self.wake_in.setblocking(False)
        self.wake_out.setblocking(False)
        self.selector.register(self.wake_in, selectors.EVENT_READ, None)
        self.closed = False
        self.thread = threading.Thread(target=self.run, name='fibosms-headers',
                                       daemon=True)

    def add(self, request, client_address):
        self.incoming.put((request, client_address))
        self.wake()

    def wake(self):
        try:
            self.wake_out.send(b'.')
        except OSError:   # its buffer is full: the reader is awake already
            pass

    def close(self):
        self.closed = True
        self.wake()

    def run(self):
        while not self.closed:
            try:
                self.step()
            except Exception:  # a bug here must not stop every push: log it, go on
                import traceback
                sys.stderr.write('fibosms-receiver: header reader: %s'
                                 % traceback.format_exc())
                sys.stderr.flush()
                time.sleep(0.1)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()
        self.wake_out.close()

    def step(self):
        """Wait for bytes or a deadline; read, hand on, or refuse what is due."""
        wait = self.deadlines[0][0] - time.monotonic() if self.deadlines else 1.0
        for key, _ in self.selector.select(max(0.01, min(wait, 1.0))):
            if key.data is None:     # add() or close() woke us
                drain(self.wake_in)
            else:
                self.read(key.fileobj, key.data)
        while not self.incoming.empty():
            request, client_address = self.incoming.get()
            request.setblocking(False)
            state = {'address': client_address, 'ahead': bytearray(), 'scanned': 0}
            self.selector.register(request, selectors.EVENT_READ, state)
            self.deadlines.append((time.monotonic() + HEADER_TIMEOUT, request))
        now = time.monotonic()
        while self.deadlines and self.deadlines[0][0] <= now:
            request = self.deadlines.popleft()[1]
            state = self.forget(request)
            if state is not None:
                self.refuse(request, 200, 'headers not in within %g s'
                            % HEADER_TIMEOUT, state)

    def read(self, request, state):
        ahead = state['ahead']
        try:
            data = request.recv(MAX_HEADER_BYTES + 1 - len(ahead))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = None
        if not data:     # closed by the client: an answer only if it asked something
            self.forget(request)
            if ahead and data is not None:
                self.refuse(request, 400, 'connection closed within the headers', state)
            else:
                request.close()
                self.server.leave(state['address'])
            return
        ahead += data
        end = header_end(ahead, state['scanned'])
        state['scanned'] = max(0, len(ahead) - 3)
        if 0 <= end <= MAX_HEADER_BYTES:
            self.forget(request)
            request.setblocking(True)
            self.server.work.put((request, state['address'], bytes(ahead)))
        elif len(ahead) > MAX_HEADER_BYTES:
            self.forget(request)
            code = 431 if b'\n' in ahead else 414
            self.refuse(request, code, 'request line and headers over %d bytes'
                        % MAX_HEADER_BYTES, state)

    def forget(self, request):
        """Stop watching `request`; its state, or None if it was not watched."""
        try:
            return self.selector.unregister(request).data
        except (KeyError, ValueError):
            return None

    def refuse(self, request, code, reason, state):
        refuse(request, code, reason, state['address'])
        self.server.leave(state['address'])

class ConnectionInput(io.RawIOBase):
    """The bytes the header reader read ahead, then the socket, until `deadline`; first, if
    the client asked for it, "100 Continue" (RFC 9110 10.1.1: once the body is wanted, so
    only after the app has let the caller in). A front end (Apache's mod_proxy_http) that
    passes the client's Expect on waits for it before it sends the body."""
    expect_continue = False

    def __init__(self, sock, ahead, deadline):
        self.sock, self.ahead, self.deadline = sock, memoryview(ahead), deadline

    def readable(self):
        return True

    def readinto(self, buffer):
        if self.ahead:
            n = min(len(buffer), len(self.ahead))
            buffer[:n] = self.ahead[:n]
            self.ahead = self.ahead[n:]
            return n
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout('body not in within %g s' % BODY_TIMEOUT)
        self.sock.settimeout(left)
        if self.expect_continue:
            self.expect_continue = False
            self.sock.sendall(b'HTTP/1.1 100 Continue\r\n\r\n')
        try:
            return self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(BODY_TIMEOUT)   # for writing the answer

class RequestHandler(WSGIRequestHandler):
    default_request_version = 'HTTP/1.0'   # not 0.9: every answer has a status line

    def setup(self):
        self.request, ahead = self.request
        self.request.settimeout(BODY_TIMEOUT)
        WSGIRequestHandler.setup(self)
        self.rfile.close()   # replaced: what the header reader read comes first
        deadline = time.monotonic() + BODY_TIMEOUT
        self.rfile = io.BufferedReader(ConnectionInput(self.request, ahead, deadline))

    def handle(self):
        # wsgiref's handle(), with the header checks, and a blank request line answered.
        self.command, self.request_version = None, self.default_request_version
        self.raw_requestline = self.rfile.readline(MAX_HEADER_BYTES + 1)
        if not self.raw_requestline.strip():
            self.requestline = ''
            self.send_error(400)
            return
        if not self.parse_request():  # it has answered
            return
        problem = header_problem(self.headers)
        if problem:
            self.log_message('refused: %s', problem[1])
            self.send_error(problem[0])
            return
        expect = self.headers.get('Expect', '').strip().lower()
        self.rfile.raw.expect_continue = (self.request_version == 'HTTP/1.1'
                                          and expect == '100-continue')
        handler = ServerHandler(self.rfile, self.wfile, self.get_stderr(),
                                self.get_environ())
        handler.request_handler, self.wsgi_handler = self, handler
        handler.run(self.server.get_app())

    def address_string(self):
        # The address the receiver believed (X-Forwarded-For from a trusted proxy), if it is
        # one, else the connection's.
        environ = getattr(getattr(self, 'wsgi_handler', None), 'environ', None) or {}
        believed = environ.get('fibosms.client_address') or ''
        if believed and len(believed) < 46 and not believed.strip('0123456789abcdefABCDEF.:'):
            return believed
        return self.client_address[0]

    def log_request(self, code='-', size='-'):
        # Neither the path (the secret, in one spelling or another) nor the query string
        # (personal data): a fixed marker where the path was.
        self.log_message('"%s%s" %s %s', self.command or '-',
                         ' /***' if getattr(self, 'path', None) else '',
                         int(code) if isinstance(code, int) else code, size)

    def log_message(self, format, *args):
        WSGIRequestHandler.log_message(self, format, *args)
        sys.stderr.flush()  # before 3.9, Python block-buffers a stderr that is no tty

    def send_error(self, code, message=None, explain=None):
        # What http.server refuses before the app runs (an unreadable request line or
        # version, too many or too long headers) gets <Status>1</Status> too, with a
        # status line, not its HTML page, which would also echo the request line back.
        self.close_connection = True
        if self.request_version not in ('HTTP/1.0', 'HTTP/1.1'):
            self.request_version = self.default_request_version
        self.send_response(code)
        self.send_header('Content-Type', CONTENT_TYPE)
        self.send_header('Content-Length', str(len(RETRY)))
        self.send_header('Connection', 'close')
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(RETRY)

    def log_error(self, format, *args):
        # http.server's messages quote the raw request line; keep only their first word.
        self.log_message('error: %s', (format % args).split(' ')[0][:40])


def header_end(ahead, start=0):
    """Where the request line and headers in `ahead` end (-1: not yet); 0 for a blank
    request line, which is answered at once (RFC 9112 2.2 lets a server skip it; the
    connection only ever carries one request here)."""
    if ahead[:1] == b'\n' or ahead[:2] == b'\r\n':
        return 0
    ends = [i for i in (ahead.find(b'\n\r\n', start), ahead.find(b'\n\n', start)) if i >= 0]
    return min(ends) if ends else -1


def header_problem(headers):
    """(code, reason) for headers the small server refuses, else None; drops the headers
    whose names hold anything but letters, digits and '-'.

    wsgiref turns '-' into '_' (PEP 3333), so ``X_Forwarded_For: 1.2.3.4`` would join the
    real X-Forwarded-For in HTTP_X_FORWARDED_FOR: such names are dropped, as nginx and Apache
    do. A folded line (RFC 9112 5.2) or a repeated header that must be single is refused.
    """
    if len(headers) > MAX_HEADERS:
        return 431, 'more than %d headers' % MAX_HEADERS
    for name in set(headers.keys()):
        if name.strip(HEADER_NAME_CHARS):
            del headers[name]
    for name, value in headers.items():
        if '\r' in value or '\n' in value:
            return 400, 'a folded header line'
    for name in SINGLE_HEADERS:
        if len(headers.get_all(name) or ()) > 1:
            return 400, '%s given twice' % name
    if 'Transfer-Encoding' in headers:
        return 411, 'a body without Content-Length'
    return None


def drain(sock):
    """Read, without waiting, what the client sent and nobody read (at most 1 MiB): a socket
    closed with unread bytes sends a reset, which may overtake the answer (RFC 9112 9.6)."""
    try:
        sock.setblocking(False)
        for _ in range(16):
            if not sock.recv(65536):
                break
    except OSError:
        pass


def refuse(sock, code, reason, client_address):
    """Answer a connection <Status>1</Status> with HTTP `code` and close it, never waiting:
    what the client has sent is read first (if it is still unread at close(), the client
    gets a reset, which may overtake the answer)."""
    phrase = BaseHTTPRequestHandler.responses.get(code, ('',))[0]
    head = ('HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nCache-Control: '
            'no-store\r\nConnection: close\r\n\r\n' % (code, phrase, CONTENT_TYPE, len(RETRY)))
    sys.stderr.write('%s - - fibosms-receiver: answered 1 (HTTP %d): %s\n'
                     % (client_address[0], code, reason))
    sys.stderr.flush()
    drain(sock)
    try:
        sock.send(head.encode('ascii') + RETRY)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


def main(make_app, argv=None):
    """``python3 receiver.py [--host H] [--port P] [--db PATH]``: serve until stopped."""
    parser = argparse.ArgumentParser(
        prog='receiver.py', description='Receive FiboSMS pushes with a small threaded server.')
    parser.add_argument('--host', default='127.0.0.1', help='address to listen on (%(default)s)')
    parser.add_argument('--port', type=int, default=8000, help='port (%(default)s; 0: any free)')
    parser.add_argument('--db', help='database file (default: FIBOSMS_DB of the settings, else'
                                     ' ~/fibosms-data/messages.sqlite3)')
    args = parser.parse_args(argv)
    given = {'db': os.path.abspath(args.db)} if args.db else {}
    sock = systemd_socket()
    server = make_server(args.host, args.port, make_app(**given), sock)
    import receiver
    try:
        database = receiver.read_settings(given=dict(
            ('FIBOSMS_' + k.upper(), v) for k, v in given.items()))['FIBOSMS_DB']
    except receiver.Reject as exc:
        database = 'none until this is mended: %s' % exc.reason
    if sock is None:
        print('Listening on http://%s:%d/' % server.server_address[:2])
    else:
        print('Listening on the socket systemd passed: %s' % sock.getsockname())
    print('Database: %s' % database)
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
