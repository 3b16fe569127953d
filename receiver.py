#!/usr/bin/env python3
"""The receiving page of FiboSMS "push SMS": one WSGI application, standard library only.

The protocol (FiboSMS's "Quy dinh ket noi push SMS"): when a customer texts the business's
private number, FiboSMSGateway calls this page with

    GET <url>?message=<the SMS text>&phone=<the sender>&guid=<the gateway's id of the SMS>

and reads the page's whole content as its answer, one of exactly two documents:

    <Status>2</Status>   done: the message is stored (and processed); never send it again
    <Status>1</Status>   not done: send it again (the gateway gives up after 5 tries)

Every answer of this page is one of those two, ``text/xml; charset=utf-8``, with these codes:

    200  <Status>2</Status>  stored now, or stored already (a retry of a known guid)
    400  <Status>1</Status>  malformed: no guid or phone, a parameter twice, a value too long,
                             a Content-Length that is no number, the secret in guid, phone
                             or message
    403  <Status>1</Status>  refused caller: wrong or missing token, address not allowed
    405  <Status>1</Status>  a method other than GET or POST
    408  <Status>1</Status>  a POST body not received in time (the server's timeout)
    413  <Status>1</Status>  a POST body over 16 KiB
    414  <Status>1</Status>  a query string over 16 KiB
    415  <Status>1</Status>  a POST body that is not application/x-www-form-urlencoded
    503  <Status>1</Status>  storage, hook or configuration failure: try again later

2 is answered only after the message is committed to SQLite with synchronous=FULL; a retry
never stores a second row (see storage.py). POST with a form body is accepted too, the query
string and the body read together.

Security model: the push carries no signature, so the page trusts a caller for knowing a
secret (FIBOSMS_TOKEN: the URL's last path segment or a ``token`` parameter, compared in
constant time) and/or for its address (FIBOSMS_ALLOW). For a POST the secret must be in the
path or query string: it is checked before the body is read. Secure by default, each a 503
with a log line saying what to set: a FIBOSMS_TOKEN set but empty, still an example value of
deploy/ or README (PLACEHOLDER_TOKENS), or shorter than MIN_TOKEN; and, with neither secret
nor allowlist, any caller but this machine itself (a loopback address, with no
X-Forwarded-For, Forwarded or X-Real-IP header: a proxy on this machine passes on callers from
elsewhere). The secret is never stored:
another parameter holding it, in its name or value, in any spelling the decoding undoes, is
dropped from raw_query and extra; a guid, phone or message holding it is refused (400). Nor is
it logged. Log lines go to ``wsgi.errors`` (the server's error log) and never hold message
text or the phone.

Settings, each read from the request's WSGI environ (Apache SetEnv), then os.environ, then
the default; or given to ``make_app(...)``, which beats both:

    FIBOSMS_DB               database file (default ~/.fibosms/messages.sqlite3)
    FIBOSMS_TOKEN            the shared secret (default: none)
    FIBOSMS_ALLOW            addresses and networks allowed to call, comma-separated
    FIBOSMS_TRUSTED_PROXIES  proxies whose X-Forwarded-For is believed, comma-separated
    FIBOSMS_HANDLER          module:function called with each stored message
    FIBOSMS_FORWARD_URL      instead of a hook, POST each stored message there (forward.py)
    FIBOSMS_FORWARD_SECRET   its Standard Webhooks signing secret, whsec_... (never logged)
    FIBOSMS_JOURNAL          wal or delete (default: wal, delete on a network filesystem)

Run as: a WSGI application (``application``); a CGI script (GATEWAY_INTERFACE is set); or
``python3 receiver.py [--host 127.0.0.1] [--port 8000] [--db PATH]``, a small threaded server
fit to face clients itself (smallserver.py, loaded only then).
"""
import io
import os
import sys

# mod_wsgi and Passenger load this file by its path without putting its folder on sys.path.
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import storage  # noqa: E402  (needs the line above)

# -- Constants --------------------------------------------------------------------------------

DONE = b'<Status>2</Status>'    # no XML declaration, no newline: the gateway's exact format
RETRY = b'<Status>1</Status>'
CONTENT_TYPE = 'text/xml; charset=utf-8'
HTTP_STATUS = {
    200: '200 OK', 400: '400 Bad Request', 403: '403 Forbidden',
    405: '405 Method Not Allowed', 408: '408 Request Timeout', 413: '413 Payload Too Large',
    414: '414 URI Too Long',
    415: '415 Unsupported Media Type', 503: '503 Service Unavailable',
}
ALLOWED_METHODS = 'GET, POST'
FORM_TYPE = 'application/x-www-form-urlencoded'
MAX_INPUT = 16 * 1024           # bytes, of the query string and of the body, each
MAX_GUID = 128                  # characters
MAX_PHONE = 32                  # characters
HANDLER_TIMEOUT = 20.0          # seconds a request waits for the hook before answering 1
MAX_RESOLVED = 16               # sets of settings an app remembers (see make_app)
MAX_READ_AWAY = 1024 * 1024     # bytes of an unread body a CGI process reads at its end,
READ_AWAY_SECONDS = 2.0         # for at most this long
CHARSETS = ('utf-8', 'cp1258', 'latin-1')  # tried in order; latin-1 decodes any bytes
HEX = frozenset(b'0123456789abcdefABCDEF')
PLACEHOLDER_TOKENS = (          # example secrets of deploy/ and README: refused as secrets
    'change-me-to-a-long-random-secret', 'secret', '<this secret>', 'change-me', 'changeme')
MIN_TOKEN = 12                  # characters of FIBOSMS_TOKEN, at least
PROXY_HEADERS = ('HTTP_X_FORWARDED_FOR', 'HTTP_FORWARDED', 'HTTP_X_REAL_IP')
SETTINGS = {                    # make_app() argument -> environment variable
    'db': 'FIBOSMS_DB', 'token': 'FIBOSMS_TOKEN', 'allow': 'FIBOSMS_ALLOW',
    'trusted_proxies': 'FIBOSMS_TRUSTED_PROXIES', 'handler': 'FIBOSMS_HANDLER',
    'journal': 'FIBOSMS_JOURNAL', 'forward_url': 'FIBOSMS_FORWARD_URL',
    'forward_secret': 'FIBOSMS_FORWARD_SECRET',
}


class Reject(Exception):
    """A push answered <Status>1</Status>: `code` is the HTTP status, `reason` the log line."""

    def __init__(self, code, reason, guid=None):
        Exception.__init__(self, reason)
        self.code = code
        self.reason = reason
        self.guid = guid


# -- The application --------------------------------------------------------------------------

def make_app(db=None, token=None, allow=None, handler=None, trusted_proxies=None,
             journal=None, handler_timeout=HANDLER_TIMEOUT, forward_url=None,
             forward_secret=None):
    """A WSGI application. Arguments left None are read per request from the WSGI environ,
    then os.environ, then defaults. `handler` may be a callable or 'module:function'."""
    given = {'db': db, 'token': token, 'allow': allow, 'handler': handler,
             'trusted_proxies': trusted_proxies, 'journal': journal,
             'forward_url': forward_url, 'forward_secret': forward_secret}
    connections = storage.Connections()
    # Settings resolved once per distinct set of FIBOSMS_* values in the WSGI environ (a
    # server has one, or one per Apache SetEnv block): os.environ is read then, not per push.
    resolved = {}

    def app(environ, start_response):
        guid = None
        try:
            key = tuple(environ.get(variable) for variable in SETTINGS.values())
            config = resolved.get(key)
            if config is None:
                if len(resolved) >= MAX_RESOLVED:
                    resolved.clear()
                config = resolved[key] = settings(environ, given)
            push = read_push(environ, config)
            guid = push['guid']
            store_and_process(push, config, environ, connections, handler_timeout)
        except Reject as exc:
            log(environ, '%d %s%s' % (exc.code, exc.reason, guid_note(exc.guid or guid)))
            return status_response(start_response, exc.code)
        except Exception:
            # A bug or an unforeseen failure: the traceback to the error log, never to the
            # caller, and <Status>1</Status> so that the gateway sends the message again.
            import traceback
            log(environ, '503 unexpected error%s\n%s' % (guid_note(guid),
                                                         traceback.format_exc().rstrip()))
            return status_response(start_response, 503)
        return status_response(start_response, 200)

    return app


def status_response(start_response, code):
    """Start the response for HTTP `code`; 200 carries <Status>2</Status>, all others 1."""
    body = DONE if code == 200 else RETRY
    headers = [('Content-Type', CONTENT_TYPE), ('Content-Length', str(len(body))),
               ('Cache-Control', 'no-store')]
    if code == 405:
        headers.append(('Allow', ALLOWED_METHODS))
    start_response(HTTP_STATUS[code], headers)
    return [body]


def log(environ, text):
    """One line to the server's error log."""
    errors = environ.get('wsgi.errors') or sys.stderr
    errors.write('fibosms-receiver: %s\n' % text)
    errors.flush()


def guid_note(guid):
    return '' if guid is None else ' (guid %r)' % guid


def settings(environ, given):
    """Each setting: make_app's argument, else the WSGI environ, else os.environ, else None."""
    config = {}
    for name, variable in SETTINGS.items():
        value = given[name]
        if value is None:
            value = environ.get(variable) or os.environ.get(variable) or None
        config[name] = value
    if config['token'] is None and given['token'] is None:
        # Set but empty is not "no token": an empty line in a settings file would turn the
        # check off without a word. Keep the '' so that check_settings refuses it.
        config['token'] = environ.get('FIBOSMS_TOKEN', os.environ.get('FIBOSMS_TOKEN'))
    if config['db'] is None:
        config['db'] = storage.default_path()
    for name in ('allow', 'trusted_proxies'):   # parsed here: once per set of settings
        if config[name]:
            config[name] = parse_networks(config[name])
    return config


def check_settings(config, environ, remote):
    """Reject(503) for a setting that would leave the page open: a secret that is set but
    empty or still the shipped placeholder, or, with neither secret nor allowlist, a caller
    that is not this machine itself."""
    token = config['token']
    if isinstance(token, bytes):
        token = token.decode('utf-8', 'replace')
    if token is not None and not token.strip():
        raise Reject(503, 'configuration: FIBOSMS_TOKEN is set but empty; set it to a long'
                          ' random secret, or unset it')
    if token is not None and token.strip().lower() in PLACEHOLDER_TOKENS:
        raise Reject(503, 'configuration: FIBOSMS_TOKEN is still the example value; set it'
                          ' to a long random secret')
    if token is not None and len(token) < MIN_TOKEN:
        # A short one is guessed, and turns up in real messages and phone numbers too, whose
        # pushes are then refused as holding it (see drop_secret_copies).
        raise Reject(503, 'configuration: FIBOSMS_TOKEN is shorter than %d characters; set'
                          ' it to a long random secret' % MIN_TOKEN)
    if token is None and not config['allow'] and not local_caller(environ, remote):
        raise Reject(503, 'configuration: neither FIBOSMS_TOKEN nor FIBOSMS_ALLOW is set, so'
                          ' only this machine may call; set FIBOSMS_TOKEN')


def local_caller(environ, remote):
    """Whether the caller is this machine itself: a loopback address, and no proxy's header
    saying the request came from somewhere else."""
    if any(environ.get(name) for name in PROXY_HEADERS):
        return False
    # Without ipaddress, which a CGI push would pay for: 127.0.0.0/8, ::1, ::ffff:127.x.y.z.
    address = remote.lower()
    if address.startswith('::ffff:'):
        address = address[7:]
    parts = address.split('.')
    return address == '::1' or (len(parts) == 4 and parts[0] == '127'
                                and all(p.isdigit() and int(p) < 256 for p in parts))


# -- Reading a push ---------------------------------------------------------------------------

def read_push(environ, config):
    """Check the request and the caller; return the push as a dict of storage columns."""
    method = environ.get('REQUEST_METHOD', 'GET')
    if method not in ('GET', 'POST'):
        raise Reject(405, 'method %r not allowed' % method[:20])
    remote = client_address(environ, config['trusted_proxies'])
    check_settings(config, environ, remote)
    if config['allow'] and not address_allowed(remote, config['allow']):
        raise Reject(403, 'address %r not allowed' % remote[:60])
    query = environ.get('QUERY_STRING', '').encode('latin-1')   # PEP 3333: bytes as latin-1
    if len(query) > MAX_INPUT:
        raise Reject(414, 'query string of %d bytes is over %d' % (len(query), MAX_INPUT))
    raw = query.split(b'&') if query else []
    if method == 'POST':
        # The secret is looked for in the path and query string before the body is read: a
        # caller without it cannot hold a thread by sending a body slowly.
        charset, params, _ = decode_params(raw)
        check_token(environ, params, config['token'], charset)
        body = read_body(environ)
        raw += body.split(b'&') if body else []
    charset, params, kept = decode_params(raw)
    guid = params.get('guid', '').strip()[:MAX_GUID] or None
    token = config['token']
    if isinstance(token, bytes):   # make_app(token=b'...')
        token = token.decode('utf-8')
    if guid and token and holds_secret(guid, token, charset):
        guid = None   # not for the log line either
    try:
        check_token(environ, params, config['token'], charset)
        if token:
            kept = drop_secret_copies(params, kept, token, charset)
        push = parse_push(params)
    except Reject as exc:
        exc.guid = guid  # for the log line
        raise
    push.update(charset=charset, remote_addr=remote or None,
                raw_query=b'&'.join(piece for piece, _, _ in kept).decode('latin-1'))
    return push


def read_body(environ):
    """The POST body, at most MAX_INPUT bytes, which must be a form (or empty)."""
    length = environ.get('CONTENT_LENGTH', '').strip()
    stream = environ['wsgi.input']
    if length:
        size = content_length(length)
        if size is None:
            raise Reject(400, 'Content-Length %r is not a number' % length[:20])
        if size > MAX_INPUT:
            raise Reject(413, 'body of %d bytes is over %d' % (size, MAX_INPUT))
        body = read_input(stream, size) if size else b''
        if len(body) < size:
            raise Reject(400, 'body ended after %d of %d bytes' % (len(body), size))
    elif environ.get('wsgi.input_terminated'):  # chunked: the server marks where it ends
        body = read_input(stream, MAX_INPUT + 1)
        if len(body) > MAX_INPUT:
            raise Reject(413, 'body is over %d bytes' % MAX_INPUT)
    else:
        return b''
    kind = environ.get('CONTENT_TYPE', '').split(';')[0].strip().lower()
    if body and kind not in ('', FORM_TYPE):
        raise Reject(415, 'body of type %r is not a form' % kind[:40])
    return body


def content_length(text):
    """CONTENT_LENGTH as an int, or None unless it is ASCII digits (str.isdecimal() and int()
    take '١٦' too), and few of them: int() refuses over 4300 digits since Python 3.11
    (CVE-2020-10735)."""
    text = text.strip()
    if not text or text.strip('0123456789') or len(text) > 18:
        return None
    return int(text)


def read_input(stream, size):
    """Read the body; a client too slow (the server's timeout) or gone is refused."""
    try:
        return stream.read(size)
    except OSError as exc:   # socket.timeout is one; mod_wsgi raises OSError on a broken read
        timed_out = 'timeout' in type(exc).__name__.lower()
        raise Reject(408 if timed_out else 400, 'body not received: %s' % type(exc).__name__)


def decode_params(raw):
    """Decode raw ``name=value`` pieces; return ``(charset, {name: value}, kept_pieces)``.

    ``+`` and percent-escapes become bytes, ``%uXXXX`` (legacy .NET encoders) its code point;
    the bytes are read as UTF-8, else Windows-1258 (Vietnamese), else Latin-1, the same for
    the whole push, so a push is never refused for its encoding nor gets U+FFFD put in.
    `kept_pieces` are ``(raw piece, name, value)`` without the token, for the raw_query column.
    """
    pieces = []
    for piece in raw:
        if piece:
            name, _, value = piece.partition(b'=')
            pieces.append((piece, unescape(name), unescape(value)))
    for charset in CHARSETS:
        try:
            decoded = [(piece, join_parts(n, charset), join_parts(v, charset))
                       for piece, n, v in pieces]
            break
        except UnicodeDecodeError:
            continue
    params, kept = {}, []
    for piece, name, value in decoded:
        if name in params:
            raise Reject(400, 'parameter %r given twice' % name[:40])
        params[name] = value
        if name != 'token':
            kept.append((piece, name, value))
    return charset, params, kept


def unescape(raw):
    """Undo form encoding of `raw` bytes: a list of bytes (to decode) and str (from %uXXXX)."""
    raw = raw.replace(b'+', b' ')
    if b'%' not in raw:
        return [raw]
    chunks = raw.split(b'%')
    parts, buf = [], bytearray(chunks[0])
    i = 1
    while i < len(chunks):
        chunk = chunks[i]
        code = chunk[1:5]
        if chunk[:1] in (b'u', b'U') and len(code) == 4 and HEX.issuperset(code):
            point, rest = int(code, 16), chunk[5:]
            if 0xD800 <= point < 0xDC00 and i + 1 < len(chunks) and not rest:
                low = chunks[i + 1][1:5]  # a UTF-16 surrogate pair spans two escapes
                if (chunks[i + 1][:1] in (b'u', b'U') and len(low) == 4
                        and HEX.issuperset(low) and 0xDC00 <= int(low, 16) < 0xE000):
                    point = 0x10000 + ((point - 0xD800) << 10) + (int(low, 16) - 0xDC00)
                    i += 1
                    rest = chunks[i][5:]
            if 0xD800 <= point < 0xE000:   # a lone surrogate is no character: keep the text
                buf += b'%' + chunk
            else:
                parts += [bytes(buf), chr(point)]
                buf = bytearray(rest)
        elif len(chunk) >= 2 and HEX.issuperset(chunk[:2]):
            buf.append(int(chunk[:2], 16))
            buf += chunk[2:]
        else:                               # a lone '%' stays as it is
            buf += b'%' + chunk
        i += 1
    parts.append(bytes(buf))
    return parts


def join_parts(parts, charset):
    return ''.join(p if isinstance(p, str) else p.decode(charset) for p in parts)


def parse_push(params):
    """The push's columns from its decoded parameters; Reject(400) if it is malformed."""
    guid = params.pop('guid', '').strip()
    phone = params.pop('phone', '').strip()
    message = params.pop('message', '')
    params.pop('token', None)
    if not guid:
        raise Reject(400, 'guid missing or empty')
    if len(guid) > MAX_GUID:
        raise Reject(400, 'guid of %d characters is over %d' % (len(guid), MAX_GUID))
    if not phone:
        raise Reject(400, 'phone missing or empty')
    if len(phone) > MAX_PHONE:
        raise Reject(400, 'phone of %d characters is over %d' % (len(phone), MAX_PHONE))
    extra = '{}'
    if params:  # parameters the gateway may add: kept, never dropped
        import json
        extra = json.dumps(params, ensure_ascii=False, sort_keys=True)
    return {'guid': guid, 'phone': phone, 'phone_normalised': normalise_phone(phone),
            'message': message, 'extra': extra}


def normalise_phone(phone):
    """International digits: '0912 345 678', '+84912345678', '84912345678' -> '84912345678'.

    A leading 0 is Vietnam's trunk prefix (country code 84); '+' or '00' starts an
    international number. None when there are no digits (a sender name, say).
    """
    digits = ''.join(c for c in phone if c in '0123456789')
    if not digits:
        return None
    if phone.startswith('+'):
        return digits
    if digits.startswith('00'):
        return digits[2:]
    if digits.startswith('0'):
        return '84' + digits[1:]
    return digits


# -- Who may call -----------------------------------------------------------------------------

def check_token(environ, params, token, charset='utf-8'):
    """Reject(403) unless the secret is the URL's last path segment or the token parameter."""
    if not token:
        return
    # Constant time, as hmac.compare_digest: the very function hmac falls back to without
    # OpenSSL (Lib/hmac.py), here without hmac's import of OpenSSL, 3 ms of every CGI push.
    try:
        from _operator import _compare_digest as compare_digest
    except ImportError:  # not CPython
        from hmac import compare_digest
    secret = token.encode('utf-8') if isinstance(token, str) else token
    path = environ.get('PATH_INFO', '').encode('latin-1')  # PEP 3333: bytes as latin-1
    offered = [path.rstrip(b'/').rpartition(b'/')[2]]
    if 'token' in params:
        offered.append(params['token'].encode('utf-8'))
        # A message that is not UTF-8 makes the whole push read as `charset`, the token too:
        # encoded back, it is the very bytes the gateway sent, which a UTF-8 secret must match.
        try:
            offered.append(params['token'].encode(charset))
        except UnicodeEncodeError:  # a %uXXXX escape outside that charset: not the secret
            pass
    # compare_digest takes time independent of where the bytes differ.
    if not any(compare_digest(secret, candidate) for candidate in offered):
        raise Reject(403, 'wrong or missing token')


def drop_secret_copies(params, kept, token, charset):
    """The kept pieces without any that holds the secret, in its name or value, in any
    spelling the decoding undoes (``&TOKEN=SECRET``, ``&t%6Fken+=SECRET``, ``%uXXXX``...);
    they leave `params` too. Reject(400) if guid, phone or message holds it: the secret is
    never stored."""
    clean = []
    for piece, name, value in kept:
        if not any(holds_secret(text, token, charset) for text in (name, value)):
            clean.append((piece, name, value))
        elif name in ('guid', 'phone', 'message'):
            raise Reject(400, 'parameter %r holds the secret' % name)
        else:
            params.pop(name, None)
    return clean


def holds_secret(text, secret, charset):
    """Whether decoded `text` holds the `secret` (str), its bytes read in any of CHARSETS."""
    if secret in text:
        return True
    if max(secret) < '\x80':   # ASCII reads the same in every one of CHARSETS: looked for
        return False
    sent = text.encode(charset, 'replace')     # the bytes as the gateway sent them
    return any(secret in sent.decode(other, 'replace') for other in CHARSETS)


def client_address(environ, trusted_proxies):
    """REMOTE_ADDR, or, when that is a trusted proxy, the nearest untrusted X-Forwarded-For
    address (the ones further left were written by the client and prove nothing)."""
    remote = environ.get('REMOTE_ADDR', '')
    if not trusted_proxies or not address_allowed(remote, trusted_proxies):
        return remote
    forwarded = environ.get('HTTP_X_FORWARDED_FOR', '')
    for hop in reversed([h.strip() for h in forwarded.split(',') if h.strip()]):
        if not address_allowed(hop, trusted_proxies):
            return hop
        remote = hop
    return remote


def address_allowed(address, networks):
    """Whether `address` is in `networks` (ip_network objects, from parse_networks)."""
    import ipaddress
    try:
        ip = ipaddress.ip_address(address.split('%')[0])  # drop an IPv6 zone: fe80::1%eth0
    except ValueError:
        return False
    if getattr(ip, 'ipv4_mapped', None):  # ::ffff:192.0.2.1 from a dual-stack socket
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


def parse_networks(networks):
    """'192.0.2.1, 2001:db8::/32' (or a list of such) -> a tuple of ip_network objects;
    Reject(503) for a bad entry."""
    import ipaddress
    text = networks if isinstance(networks, str) else ','.join(networks)
    parsed = []
    for entry in text.split(','):
        if entry.strip():
            try:
                parsed.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                raise Reject(503, 'configuration: %r is not an address or network'
                             % entry.strip()[:60])
    return tuple(parsed)


# -- Storing and processing -------------------------------------------------------------------

def store_and_process(push, config, environ, connections, handler_timeout):
    """Store the push durably and run the hook; return normally only when the answer is 2."""
    handler = storage.choose_hook(config['handler'], config['forward_url'],
                                  config['forward_secret'])
    # A server whose threads live on keeps each thread's connection open; a CGI process
    # (wsgi.run_once, PEP 3333) serves one request, so it opens and closes one.
    keep = not environ.get('wsgi.run_once')
    try:
        with connections.use(config['db'], config['journal'], keep) as conn:
            action, first = storage.deliver(
                conn, push, storage.CLAIM_SECONDS if handler else None)
    except (storage.StorageError, storage.sqlite3.Error, OSError) as exc:
        raise Reject(503, 'storage failed: %s: %s%s' % (type(exc).__name__, exc,
                                                         storage.diagnose(config['db'])))
    if first and (first['phone'] != push['phone'] or first['message'] != push['message']):
        log(environ, 'warning: guid %r delivered again with a different phone or message;'
                     ' the first one is kept' % push['guid'])
    if action == 'busy':
        raise Reject(503, 'hook already running for this guid')
    if action == 'run':
        def connect():
            return storage.connect(config['db'], config['journal'])
        run_handler(handler, push['guid'], connect, handler_timeout)


def run_handler(handler, guid, connect, timeout):
    """Run the hook in a thread of its own and wait at most `timeout` seconds for it.

    A hook that hangs keeps its claim (so it is not run twice at once); if it never ends, the
    claim expires after storage.CLAIM_SECONDS and a later delivery runs it again.
    """
    import threading
    outcome = []

    def work():
        try:
            outcome.append(storage.process(connect, guid, handler))
        except Exception as exc:  # the database failed around the hook
            outcome.append('storage failed around it: %s' % type(exc).__name__)

    thread = threading.Thread(target=work, name='fibosms-hook', daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise Reject(503, 'hook still running after %g s' % timeout)
    if outcome[0] is not None:
        raise Reject(503, 'hook failed: %s' % outcome[0])


application = make_app()


# -- Entry points: CGI and the small server ---------------------------------------------------

# The CGI variables that carry the request's own bytes: the ones wsgiref.handlers transcodes.
CGI_REQUEST_VARIABLES = frozenset((
    'SCRIPT_NAME', 'PATH_INFO', 'QUERY_STRING', 'REQUEST_METHOD', 'AUTH_TYPE',
    'CONTENT_TYPE', 'CONTENT_LENGTH', 'HTTPS', 'REMOTE_USER', 'REMOTE_IDENT'))


def serve_cgi(app=application):
    """Serve the one request of a CGI process (the web server set GATEWAY_INTERFACE).

    The gateway of PEP 3333's own example (run_with_cgi), rather than
    wsgiref.handlers.CGIHandler, whose import of `re` costs some 3 ms of every push;
    tests/test_cgi_gateway.py holds the two to the same bytes out. Two differences: should
    `app` raise before it answers, the answer is 503 <Status>1</Status>, not an HTML 500;
    and what `app` left unread of the body is read at the end (`read_away`).
    """
    environ = cgi_environ()
    # Python sets sys.stdin to None when file descriptor 0 is closed: no body then.
    stdin = CountedInput(sys.stdin.buffer.raw if sys.stdin is not None else io.BytesIO())
    environ.update({
        'wsgi.input': io.BufferedReader(stdin), 'wsgi.errors': sys.stderr,
        'wsgi.version': (1, 0), 'wsgi.multithread': False, 'wsgi.multiprocess': True,
        'wsgi.run_once': True,
        'wsgi.url_scheme': 'https' if environ.get('HTTPS') in ('yes', 'on', '1') else 'http'})
    out = sys.stdout.buffer
    headers_set, headers_sent = [], []

    def write(data):
        if not headers_sent:   # the headers go out before the first bytes of the body
            status, headers = headers_sent[:] = headers_set
            out.write(''.join(['Status: %s\r\n' % status] + ['%s: %s\r\n' % header
                                                               for header in headers]
                              + ['\r\n']).encode('latin-1'))
        out.write(data)
        out.flush()

    def start_response(status, headers, exc_info=None):
        if exc_info and headers_sent:
            raise exc_info[1].with_traceback(exc_info[2])
        headers_set[:] = [status, headers]
        return write

    try:
        result = app(environ, start_response)
        try:
            for data in result:
                if data:
                    write(data)
            if not headers_sent:
                write(b'')
        finally:
            if hasattr(result, 'close'):
                result.close()
    except Exception:
        import traceback
        log(environ, '503 unexpected error in the CGI gateway\n%s'
            % traceback.format_exc().rstrip())
        if not headers_sent:
            status_response(start_response, 503)
            write(RETRY)
    read_away(stdin, environ)


class CountedInput(io.RawIOBase):
    """The CGI process's stdin, counting the bytes taken from it."""

    def __init__(self, raw):
        self.raw, self.taken = raw, 0

    def readable(self):
        return True

    def readinto(self, buffer):
        count = self.raw.readinto(buffer)
        self.taken += count or 0
        return count


def read_away(stdin, environ):
    """Read what the application left of the request body: the rest of CONTENT_LENGTH, or
    of a chunked body (Apache passes it on without one) up to its end; at most MAX_READ_AWAY
    bytes, for at most READ_AWAY_SECONDS. A CGI script that exits with its input unread has
    Apache's mod_cgid lose its answer: the socket between them is reset (AH00574), and the
    client gets none. The bounds free the process from a client that sends slowly or never
    (Apache itself still waits for the body, within its own timeouts)."""
    length = content_length(environ.get('CONTENT_LENGTH', ''))
    if length is None and environ.get('HTTP_TRANSFER_ENCODING'):
        length = stdin.taken + MAX_READ_AWAY
    left = min((length or 0) - stdin.taken, MAX_READ_AWAY)
    if left <= 0:
        return
    import select
    import time
    deadline = time.monotonic() + READ_AWAY_SECONDS
    try:
        while left > 0:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([stdin.raw], [], [], wait)[0]:
                break
            chunk = stdin.raw.read(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)
    except OSError:  # the server closed it, or there is no stdin: nothing left to lose
        pass


def cgi_environ():
    """os.environ as a WSGI environ: the request's variables carry its bytes as latin-1 text
    (PEP 3333, "Unicode Issues"), the others stay as Python read them (a file name in
    FIBOSMS_DB, say); the same choice as wsgiref.handlers.read_environ on POSIX."""
    encoding = sys.getfilesystemencoding()
    environ = {}
    for name, value in os.environ.items():
        base = name
        while base.startswith('REDIRECT_'):  # Apache's copies of the variables of a redirect
            base = base[len('REDIRECT_'):]
        if base in CGI_REQUEST_VARIABLES or base.startswith(('HTTP_', 'SSL_')):
            value = value.encode(encoding, 'surrogateescape').decode('latin-1')
        environ[name] = value
    return environ


def make_server(host, port, app):
    """The small server of smallserver.py, serving `app` on `host`:`port`."""
    import smallserver
    return smallserver.make_server(host, port, app)


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(
        description='Receive FiboSMS pushes with a small threaded server.')
    parser.add_argument('--host', default='127.0.0.1', help='address to listen on (%(default)s)')
    parser.add_argument('--port', type=int, default=8000, help='port (%(default)s; 0: any free)')
    parser.add_argument('--db', help='database file (default: $FIBOSMS_DB or '
                                     '~/.fibosms/messages.sqlite3)')
    args = parser.parse_args(argv)
    app = make_app(db=os.path.abspath(args.db)) if args.db else application
    server = make_server(args.host, args.port, app)
    host, port = server.server_address[:2]
    print('Listening on http://%s:%d/' % (host, port))
    print('Database: %s' % os.path.abspath(
        args.db or os.environ.get('FIBOSMS_DB') or storage.default_path()))
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == '__main__':
    if 'GATEWAY_INTERFACE' in os.environ:
        serve_cgi()
    else:
        sys.exit(main())
