#!/usr/bin/env python3
"""FiboSMS on this machine: its gateway and its web-service API together, to try a receiving
page, catch-up and replies before going live. Standard library only; Python 3.6 or newer.

    python3 deploy/fibosms_emulator.py --page URL [--port 8700] [--client-no CL1234]
        [--client-pass PASSWORD] [--service-type 1] [--balance 20] [--form asmx|guide]
        [--guid uuid|id] [--tries 5] [--wait 2]

Give the receiver's settings file the emulator's API and account (the same password):

    FIBOSMS_API_URL=http://127.0.0.1:8700/Service.asmx
    FIBOSMS_API_CLIENT_NO=CL1234
    FIBOSMS_API_CLIENT_PASS=emulator-password

then type SMS on the emulator's standard input, one a line, "PHONE TEXT": ``0912345678 DK``.
It prints what becomes of each, and each reply the receiver "sends".

The gateway (docs/GATEWAY.md): each SMS is pushed to the page as FiboSMSGateway pushes it,
GET <page>?message=...&phone=...&guid=..., up to --tries times, --wait seconds apart, each
waiting --push-timeout; <Status>2</Status> makes it Confirmed (2); anything else, every time,
makes it NoClientResponse (5): an SMS the page lost, which ``storage.py catchup`` brings in.

The API, http://127.0.0.1:PORT/Service.asmx/<Function>?clientNo=...&clientPass=... (GET, or
POST of a form): About, CheckClient, GetClientBalance, GetCommingSMSList (minutes), SendSMS
and SendMaskedSMS, with the codes of FiboSMS's guide: 100 a wrong account (every function but
About), 101 a phone that is not a Vietnamese number, 102 no balance left, 103 a serviceType the
account lacks; 200 "Sending..." takes one from the balance and puts the SMS in the outbox:
nothing is really sent. Answers come in one of two forms: --form asmx, what an ASP.NET web
service sends (an XML declaration, and <string xmlns="http://tempuri.org/"> holding the XML as
escaped text), or --form guide, as the guide prints them (the XML inside <string>, values
padded with spaces, element names in its changing case). Where the guide says nothing, this
is a guess: a `minutes` over --max-minutes is taken as --max-minutes; a push's guid is a new
GUID (--guid uuid) or the SMS's ClientCommingSMSID (--guid id).

Also, as JSON: GET /incoming?phone=...&message=... (an SMS arrives; its id), GET /sms (every
SMS and its state), GET /outbox (the SMS the API was asked to send).

The tests import `Emulator` and set its faults (`fault`): slow, trickling, huge, cut short,
not XML, a DTD, HTTP 500, a closed connection, any code.
"""
import argparse
import http.server
import json
import re
import socketserver
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

JUST_RECEIVED, PROCESSING, CONFIRMED, WRONG_SYNTAX, EXPIRED, NO_CLIENT_RESPONSE = range(6)
STATE_NAMES = ('JustReceived', 'Processing', 'Confirmed', 'WrongSyntax', 'Expired',
               'NoClientResponse')
DONE = b'<Status>2</Status>'
MESSAGES = {0: 'Nguyen Van A', 100: 'Please check your account!',
            101: 'Please check your Phone number!', 102: 'Your balance is zero!',
            103: 'Service type is wrong!', 104: 'The number of SMS is greater than SMS balance!',
            200: 'Sending...', 202: 'Noi dung loi', 301: 'No SMS!'}
FAULTS = ('slow', 'trickle', 'huge', 'truncated', 'garbage', 'doctype', 'entity', 'http500',
          'close', 'empty', 'redirect', 'unwrapped', 'html')
HUGE = 9 * 1024 * 1024  # bytes of a 'huge' answer: more than a client should read
MAX_FORM = 64 * 1024    # bytes of a POST body read
ZONE = 7 * 3600         # the guide's dates are in +07:00
# Characters XML 1.0 cannot carry: written as .NET's writer would, a character reference.
NOT_XML = re.compile('[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]')


class Emulator:
    """FiboSMS's gateway and API on 127.0.0.1. `start()`, then `url` is the API's base
    (FIBOSMS_API_URL); `receive(phone, message)` makes an SMS arrive, pushed to `page` (which
    may be changed at any time; None: no gateway, the SMS stays JustReceived); `status=` gives
    it a state at once, unpushed. `sms`, `outbox` (SendSMS and SendMaskedSMS accepted) and
    `calls` ((function, parameters but clientPass, whether it was right)) tell what happened;
    `wait_idle()` waits for the pushes; `fault(kind)` spoils the next answers; `stop()`.
    `cert` ((certificate, key) files) serves the API over https."""

    def __init__(self, page=None, client_no='CL1234', client_pass='emulator-password',
                 host='127.0.0.1', port=0, form='asmx', guid='uuid', tries=5, wait=2.0,
                 push_timeout=10.0, balance=20, service_types=('1', '3'), max_minutes=10080,
                 namespace='http://tempuri.org/', slow=30.0, say=None, cert=None):
        self.page, self.client_no, self.client_pass = page, client_no, client_pass
        self.form, self.guid, self.tries, self.wait = form, guid, tries, wait
        self.push_timeout, self.balance = push_timeout, balance
        self.service_types = tuple(service_types)
        self.max_minutes, self.namespace, self.slow = max_minutes, namespace, slow
        self.say = say or (lambda line: None)
        self.sms, self.outbox, self.calls, self.faults = [], [], [], []
        self.lock = threading.Condition()
        self.waiting = []       # SMS to push, in order
        self.pushing = 0        # SMS received and not yet done with
        self.stopping = threading.Event()
        self.server = Server((host, port), Handler)
        self.server.emulator = self
        if cert:    # (certificate file, key file): the API over https
            import ssl
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*cert)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = '%s://%s:%d/Service.asmx' % (
            'https' if cert else 'http', host, self.server.server_address[1])
        self.threads = []

    def start(self):
        for target in (lambda: self.server.serve_forever(0.05), self.pusher):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def stop(self):
        self.stopping.set()
        with self.lock:
            self.lock.notify_all()
        self.server.shutdown()
        self.server.server_close()
        for thread in self.threads:
            thread.join(10)

    # -- The gateway ------------------------------------------------------------------------

    def receive(self, phone, message, status=None, created=None, service_type_id='229',
                service_type_name='8022(FIBO)'):
        """An SMS arrives (at Unix time `created`, now by default); the new SMS (a dict)."""
        with self.lock:
            number = 62 + len(self.sms)     # the guide's first example is 62
            sms = {'id': number, 'phone': phone, 'message': message, 'pushes': 0,
                   'status': JUST_RECEIVED if status is None else status,
                   'created': time.time() if created is None else created,
                   'guid': str(number) if self.guid == 'id' else str(uuid.uuid4()),
                   'service_type_id': service_type_id, 'service_type_name': service_type_name}
            self.sms.append(sms)
            if status is None and self.page:
                self.waiting.append(sms)
                self.pushing += 1
                self.lock.notify_all()
        return sms

    def wait_idle(self, timeout=30.0):
        """Return once every SMS received is pushed to its end; AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while self.pushing:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError('%d SMS still being pushed' % self.pushing)
                self.lock.wait(left)

    def pusher(self):
        while True:
            with self.lock:
                while not self.waiting and not self.stopping.is_set():
                    self.lock.wait()
                if self.stopping.is_set():
                    return
                sms = self.waiting.pop(0)
                sms['status'] = PROCESSING
            self.push(sms)
            with self.lock:
                self.pushing -= 1
                self.lock.notify_all()

    def push(self, sms):
        """Push `sms` up to `tries` times; Confirmed on <Status>2</Status>, else
        NoClientResponse."""
        for attempt in range(1, self.tries + 1):
            page = self.page
            done = page is not None and try_push(page, sms, self.push_timeout)
            with self.lock:
                sms['pushes'] += 1
                if done:
                    sms['status'] = CONFIRMED
            if done:
                self.say('SMS %d: Confirmed, try %d' % (sms['id'], attempt))
                return
            if attempt < self.tries and self.stopping.wait(self.wait):
                break
        with self.lock:
            sms['status'] = NO_CLIENT_RESPONSE
        self.say('SMS %d: NoClientResponse after %d tries' % (sms['id'], sms['pushes']))

    # -- The API ----------------------------------------------------------------------------

    def fault(self, kind, function=None, times=1):
        """Spoil the next `times` answers (of `function`, or of any but About): `kind` is one
        of FAULTS, or a code (int) answered instead."""
        assert kind in FAULTS or isinstance(kind, int), kind
        with self.lock:
            self.faults.extend([(function, kind)] * times)

    def take_fault(self, function):
        with self.lock:
            for n, (name, kind) in enumerate(self.faults):
                if name in (None, function) and function != 'About':
                    del self.faults[n]
                    return kind
        return None

    def call(self, function, params):
        """(HTTP status, body, fault) of a call: the function's effect done, its answer made."""
        right = (params.get('clientNo'), params.get('clientPass')) == (
            self.client_no, self.client_pass)
        with self.lock:
            self.calls.append((function, dict((k, v) for k, v in params.items()
                                              if k != 'clientPass'), right))
        fault = self.take_fault(function)
        if isinstance(fault, int):
            return 200, self.wrap(code(fault, self.form)), None
        handler = {'about': self.about, 'checkclient': self.check_client,
                   'getclientbalance': self.get_balance, 'getcommingsmslist': self.comming,
                   'sendsms': self.send, 'sendmaskedsms': self.send}.get(function.lower())
        if handler is None:
            return 500, b'System.InvalidOperationException: ' + function.encode()[:80], None
        if function.lower() != 'about' and not right:
            return 200, self.wrap(code(100, self.form)), fault
        try:
            inner = handler(params, function)
        except ValueError:      # what ASP.NET answers a parameter it cannot convert
            return 500, b'System.ArgumentException: Cannot convert to System.Int32.', fault
        return 200, self.wrap(inner), fault

    def wrap(self, inner):
        """The answer's bytes: the ASP.NET form, or the guide's."""
        if self.form == 'asmx':
            return ('<?xml version="1.0" encoding="utf-8"?>\r\n<string xmlns="%s">%s</string>'
                    % (self.namespace, escape(inner))).encode('utf-8')
        return ('<string>%s</string>' % inner).encode('utf-8')

    def about(self, params, function):
        return 'www.Fibovietnam.com' if self.form == 'asmx' else ' www.Fibovietnam.com'

    def check_client(self, params, function):
        return code(0, self.form)

    def get_balance(self, params, function):
        return str(self.balance if params.get('serviceType') in self.service_types else -1)

    def comming(self, params, function):
        minutes = min(int(params.get('minutes', '')), self.max_minutes)
        since = time.time() - minutes * 60
        with self.lock:
            listed = [dict(sms) for sms in self.sms if sms['created'] >= since]
        if not listed:
            return '<DocumentElement />'
        guide = self.form == 'guide'
        pad = ' %s' if guide else '%s'
        rows = ''.join(
            '<SMSLIST>' + ''.join('<%s>%s</%s>' % (name, escape(value), name) for name, value in (
                ('ClientCommingSMSID', pad % sms['id']),
                ('PhoneNumber', pad % listed_phone(sms['phone'])),
                ('Message' if guide else 'message', sms['message'] + (' ' if guide else '')),
                ('ClientCommingSMSStatus', pad % sms['status']),
                ('CreatedDate' if guide else 'createddate', pad % date(sms['created'])),
                ('ServiceTypeID', pad % sms['service_type_id']),
                ('serviceTypename', sms['service_type_name']))) + '</SMSLIST>'
            for sms in listed)
        return '<DocumentElement>%s</DocumentElement>' % rows

    def send(self, params, function):
        phone = params.get('phoneNumber', '')
        if not re.match(r'(\+?84|0)[0-9]{9,10}$', phone):
            return code(101, self.form)
        if params.get('serviceType') not in self.service_types:
            return code(103, self.form)
        with self.lock:
            if self.balance <= 0:
                return code(102, self.form)
            self.balance -= 1
            self.outbox.append({'function': function, 'phone': phone,
                                'message': params.get('smsMessage', ''),
                                'sms_guid': params.get('smsGUID', ''),
                                'service_type': params.get('serviceType'),
                                'sender_name': params.get('senderName'), 'at': time.time()})
        self.say('reply to %s: %r' % (phone, params.get('smsMessage', '')))
        return code(200, self.form)


# -- HTTP -------------------------------------------------------------------------------------

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.0'

    def do_GET(self):
        self.answer(urllib.parse.urlsplit(self.path).query)

    def do_POST(self):
        length = min(int(self.headers.get('Content-Length') or 0), MAX_FORM)
        self.answer(self.rfile.read(length).decode('utf-8', 'replace'))

    def log_message(self, format, *args):   # the request line holds the password: no log
        pass

    def answer(self, query):
        emulator = self.server.emulator
        path = urllib.parse.urlsplit(self.path).path
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        if path in ('/sms', '/outbox', '/incoming'):
            if path == '/incoming':
                sms = emulator.receive(params.get('phone', ''), params.get('message', ''))
                data = {'id': sms['id']}
            else:
                with emulator.lock:
                    data = [dict(item) for item in getattr(emulator, path[1:])]
            return self.write(200, json.dumps(data, ensure_ascii=False).encode('utf-8'),
                              'application/json')
        match = re.match(r'/service\.asmx/(\w+)$', path, re.I)
        if not match:
            return self.write(404, b'Not Found', 'text/plain')
        status, body, fault = emulator.call(match.group(1), params)
        if fault is None:
            return self.write(status, body)
        try:
            self.spoil(fault, body, emulator)
        except OSError:     # the client hung up: what a bounded reader does
            pass

    def write(self, status, body, kind='text/xml; charset=utf-8', headers=()):
        try:
            self.send_response(status)
            self.send_header('Content-Type', kind)
            self.send_header('Content-Length', str(len(body)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass

    def spoil(self, fault, body, emulator):
        """Answer with the fault `fault` instead of `body` (the function ran all the same)."""
        if fault == 'slow':
            emulator.stopping.wait(emulator.slow)
            return self.write(200, body)
        if fault == 'trickle':
            self.send_response(200)
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            for byte in body:
                if emulator.stopping.wait(0.2):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            return
        if fault == 'huge':
            self.send_response(200)
            self.send_header('Content-Length', str(HUGE + 17))
            self.end_headers()
            self.wfile.write(b'<string>')
            for _ in range(HUGE // 65536):
                self.wfile.write(b'x' * 65536)
            return self.wfile.write(b'</string>')
        if fault == 'truncated':
            self.send_response(200)
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            return self.wfile.write(body[:len(body) // 2])
        if fault == 'close':
            return
        lol = '<!ENTITY a "aaaaaaaaaa">' + ''.join('<!ENTITY %s "%s">' % (
            chr(98 + n), ('&%s;' % chr(97 + n)) * 10) for n in range(8))
        self.write(*{
            'garbage': (200, b'\x00\xff\xfe not XML at all <<<'),
            'doctype': (200, ('<?xml version="1.0"?><!DOCTYPE string [%s]><string>&i;</string>'
                              % lol).encode()),
            'entity': (200, emulator.wrap('<!DOCTYPE SMS [%s]><SMS><Code>&i;</Code></SMS>'
                                          % lol)),
            'http500': (500, b'<html><body>Server Error in \'/\' Application.</body></html>'),
            'empty': (200, emulator.wrap('')),
            'redirect': (302, b'', 'text/plain', [('Location', 'http://127.0.0.1:9/')]),
            'unwrapped': (200, unwrapped(body, emulator.form)),
            'html': (200, b'<html><head><title>Login</title></head><body>Wi-Fi</body></html>'),
        }[fault])


def unwrapped(body, form):
    """The XML the <string> of `body` holds, as an answer of its own (no <string>)."""
    import html
    inner = re.search(rb'<string[^>]*>(.*)</string>', body, re.S)
    if inner is None:
        return body
    if form != 'asmx':
        return inner.group(1)
    return html.unescape(inner.group(1).decode('utf-8')).encode('utf-8')


def try_push(page, sms, timeout):
    """One push of `sms` to `page`: whether the page answered <Status>2</Status>."""
    query = urllib.parse.urlencode([('message', sms['message']), ('phone', push_phone(
        sms['phone'])), ('guid', sms['guid'])], encoding='utf-8')
    url = page + ('&' if '?' in page else '?') + query
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers={
                'User-Agent': 'FiboSMSGateway (emulated)'}), timeout=timeout) as response:
            body = response.read(4096)
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read(4096)
    except (OSError, ValueError):
        return False
    return body.strip() == DONE


def code(number, form):
    """An <SMS> status of `number`: the guide pads some values with a space."""
    pad = ' ' if form == 'guide' else ''
    return '<SMS><Code>%s%d</Code><Message>%s</Message><Time></Time></SMS>' % (
        pad, number, escape(MESSAGES.get(number, 'Error %d' % number)))


def escape(text):
    """`text` as XML character data; what XML cannot carry as a character reference."""
    text = str(text).replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')
    return NOT_XML.sub(lambda m: '&#x%X;' % ord(m.group()), text)


def digits(phone):
    return ''.join(c for c in phone if c.isdigit())


def listed_phone(phone):
    """The phone as GetCommingSMSList shows it: +84909128628."""
    number = digits(phone)
    return '+84' + number[1:] if number.startswith('0') else '+' + number


def push_phone(phone):
    """The phone as the push carries it: international digits, 84909128628."""
    return listed_phone(phone)[1:]


def date(t):
    """Unix time `t` as the guide writes a date: 2008-05-27T19:17:00+07:00."""
    return time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(t + ZONE)) + '+07:00'


def main(argv=None):
    parser = argparse.ArgumentParser(description='FiboSMS\'s gateway and API, emulated on'
                                     ' this machine.')
    parser.add_argument('--page', help="the receiving page's URL, with its secret")
    parser.add_argument('--host', default='127.0.0.1', help='address to serve the API on')
    parser.add_argument('--port', type=int, default=8700, help='port of the API (8700)')
    parser.add_argument('--client-no', default='CL1234')
    parser.add_argument('--client-pass', default='emulator-password')
    parser.add_argument('--service-type', action='append', help="the account's serviceType"
                        ' (1 and 3 by default; may be given again)')
    parser.add_argument('--balance', type=int, default=20, help='SMS the account may send')
    parser.add_argument('--form', choices=('asmx', 'guide'), default='asmx')
    parser.add_argument('--guid', choices=('uuid', 'id'), default='uuid')
    parser.add_argument('--tries', type=int, default=5)
    parser.add_argument('--wait', type=float, default=2.0)
    parser.add_argument('--push-timeout', type=float, default=10.0)
    parser.add_argument('--max-minutes', type=int, default=10080)
    args = parser.parse_args(argv)
    if args.page and not args.page.startswith(('http://', 'https://')):
        parser.error('--page must start with http:// or https://')

    def say(line):
        print(line)
        sys.stdout.flush()
    emulator = Emulator(args.page, args.client_no, args.client_pass, args.host, args.port,
                        args.form, args.guid, args.tries, args.wait, args.push_timeout,
                        args.balance, args.service_type or ('1', '3'), args.max_minutes,
                        say=say).start()
    say('FiboSMS emulated: the API at %s (account %s); pushing to %s' % (
        emulator.url, args.client_no, 'the page' if args.page else 'no page (no --page)'))
    say('Type an SMS a line, PHONE TEXT (Ctrl-C ends):')
    try:
        for line in sys.stdin:
            phone, _, text = line.strip().partition(' ')
            if phone:
                say('SMS %d from %s' % (emulator.receive(phone, text)['id'], phone))
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
