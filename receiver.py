#!/usr/bin/env python3
"""The receiving page of FiboSMS "push SMS": one WSGI application (``application``), standard
library only, that also runs as a CGI script (`serve_cgi`) and as a small server of its own:
``python3 receiver.py [--host H] [--port P] [--db PATH]`` (smallserver.py).

FiboSMSGateway calls ``GET <url>?message=<text>&phone=<sender>&guid=<its id>`` and reads the
page as its answer: <Status>2</Status>, done; <Status>1</Status>, send it again (5 tries at
most). Every answer is one of the two, text/xml; charset=utf-8: 2, with HTTP 200, once the
message is stored, now or by an earlier delivery; 1 with 200 where a retry can help ("try
again": the database or the hook failed or is busy, a setting is wrong), else with the 4xx of
REASONS that says why no retry can: 403 a refused caller, 400 a malformed push, 405, 414, and
a POST body's 413, 415 (post.py). README.md, "The answers", has the whole table.

2 only once the message is committed (storage.py); a retry never stores a second row. A caller
is trusted for the secret (FIBOSMS_TOKEN: the URL's last path segment or a ``token`` parameter,
checked before all else it sent) and/or its address (FIBOSMS_ALLOW); else only this machine
may call. The secret is stored and logged nowhere; a log line is a reason, never the secret, a
phone or a text. docs/AUDIT.md maps each promise to its lines.
"""
import io
import os
import sqlite3
import sys
from _operator import _compare_digest as compare_digest  # hmac's own: see check_token

# mod_wsgi and Passenger load this file by its path, without its folder on sys.path, and
# mod_wsgi under another name: the modules beside it import it as `receiver`, this one.
HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
sys.modules.setdefault('receiver', sys.modules[__name__])

import storage  # noqa: E402  (needs the lines above)

# -- Constants: the answers, the bounds (docs/AUDIT.md lists them with the front ends') ------

DONE = b'<Status>2</Status>'    # no XML declaration, no newline: the gateway's exact format
RETRY = b'<Status>1</Status>'
CONTENT_TYPE = 'text/xml; charset=utf-8'
TRY_AGAIN = 200                 # the HTTP code of <Status>1</Status> where a retry can help
REASONS = {200: 'OK', 400: 'Bad Request', 403: 'Forbidden', 405: 'Method Not Allowed',
           413: 'Payload Too Large', 414: 'URI Too Long', 415: 'Unsupported Media Type'}
MAX_INPUT = 16 * 1024           # bytes, of the query string and of a POST body, each
MAX_GUID, MAX_PHONE = 128, 32   # characters
HOOK_WAIT = 20.0                # seconds a push waits for its hook, then is answered 1
CGI_CLAIM = HOOK_WAIT + 10.0    # a CGI hook's claim: its process ends just after the wait
CHARSETS = ('utf-8', 'cp1258', 'latin-1')   # tried in turn; latin-1 reads any bytes
HEX = frozenset(b'0123456789abcdefABCDEF')
PLACEHOLDER_TOKENS = ('change-me-to-a-long-random-secret', 'secret', '<this secret>',
                      'change-me', 'changeme')  # the example secrets of deploy/ and README
MIN_TOKEN = 12                  # characters of FIBOSMS_TOKEN, at least
PROXY_HEADERS = ('HTTP_X_FORWARDED_FOR', 'HTTP_FORWARDED', 'HTTP_X_REAL_IP')
DATA_FOLDER, OLD_FOLDER, SETTINGS_FILE = 'fibosms-data', '.fibosms', 'settings.env'
DATABASE_FILE, LOG_FILE = 'messages.sqlite3', 'receiver.log'


class Reject(Exception):
    """A push answered <Status>1</Status>: `code` is the HTTP code, `reason` the log line."""

    def __init__(self, code, reason, guid=None):
        Exception.__init__(self, reason)
        self.code, self.reason, self.summary, self.guid = code, reason, reason, guid


class SettingError(Reject):
    """A setting that cannot work: try again once it is mended. Never quotes a secret."""

    def __init__(self, text):
        Reject.__init__(self, TRY_AGAIN, 'configuration: ' + text)


# -- The application --------------------------------------------------------------------------

def make_app(config=None, **given):
    """The WSGI application: `config` names the settings file; keywords (db, token, allow,
    handler, forward_url...) are settings that beat every other source."""
    given = dict(('FIBOSMS_' + k.upper(), v) for k, v in dict(given, config=config).items()
                 if v is not None)
    kept = []   # a long-running server's kept connection (connections.py), from its first push

    def application(environ, start_response):
        place, guid = config_path(environ, given), None
        try:
            settings = read_settings(environ, given, place)
            push = read_push(environ, settings)
            guid = push['guid']
            store(push, settings, environ, kept)
        except Exception as exc:    # a Reject, or a bug: <Status>1</Status> all the same
            rejected = isinstance(exc, Reject)
            try:
                import ownerlog     # the reason to the owner's log, a bug's traceback too
                ownerlog.answered(environ, place, exc, (exc.guid or guid) if rejected else guid)
            except ImportError:     # not uploaded: the reason to the server's log alone
                environ['wsgi.errors'].write('fibosms-receiver: %s (and ownerlog.py is missing)'
                                             '\n' % getattr(exc, 'reason', 'unexpected error'))
            return answer(start_response, exc.code if rejected else TRY_AGAIN, RETRY)
        return answer(start_response, 200, DONE)

    return application


def answer(start_response, code, body):
    start_response('%d %s' % (code, REASONS[code]), [
        ('Content-Type', CONTENT_TYPE), ('Content-Length', str(len(body))),
        ('Cache-Control', 'no-store')] + ([('Allow', 'GET, POST')] if code == 405 else []))
    return [body]


# -- Settings ---------------------------------------------------------------------------------

def read_settings(environ=None, given=None, place=None):
    """Every FIBOSMS_* setting from the first source that has it: `given` (make_app's), the
    settings file, the WSGI environ (SetEnv), os.environ. Read at every push."""
    path, named = place or config_path(environ, given)
    settings = {}
    for values in (os.environ, environ or {}, read_settings_file(path, named)[0], given or {}):
        settings.update((k, v) for k, v in values.items() if k.startswith('FIBOSMS_'))
    settings['FIBOSMS_CONFIG'] = path
    settings['FIBOSMS_DB'] = os.path.abspath(
        settings.get('FIBOSMS_DB') or os.path.join(os.path.dirname(path), DATABASE_FILE))
    return settings


def config_path(environ=None, given=None):
    """(the settings file FIBOSMS_CONFIG names, True), else (settings.env in ~/fibosms-data, or
    in ~/.fibosms where only that holds a database, as before the settings file, False)."""
    named = next((layer['FIBOSMS_CONFIG'] for layer in (given or {}, environ or {}, os.environ)
                  if layer.get('FIBOSMS_CONFIG')), None)
    if named:
        return os.path.abspath(os.path.expanduser(named)), True
    home = os.path.expanduser('~')
    old = os.path.join(home, OLD_FOLDER)
    folder = old if (not os.path.lexists(os.path.join(home, DATA_FOLDER)) and os.path.lexists(
        os.path.join(old, DATABASE_FILE))) else os.path.join(home, DATA_FOLDER)
    return os.path.join(folder, SETTINGS_FILE), False


def read_settings_file(path, named):
    """({name: value}, [(line number, problem)]): FIBOSMS_NAME=value lines, as systemd's
    EnvironmentFile takes them. It holds the secret: it must be private, as the database."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), 'rb') as f:
            problem = (storage.folders_problem(os.path.dirname(path))
                       or storage.place_problem(path, 'settings file'))
            text = f.read(64 * 1024).decode('utf-8')
    except (FileNotFoundError, NotADirectoryError):
        if named:
            raise SettingError('the settings file %s (FIBOSMS_CONFIG) does not exist' % path)
        return {}, []
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingError('the settings file %s cannot be read: %s' % (path, getattr(
            exc, 'strerror', None) or 'it is not UTF-8 text'))
    if problem:
        raise SettingError(problem)
    values, problems = {}, []
    for number, line in enumerate(text.lstrip('\ufeff').splitlines(), 1):
        name, sep, value = (part.strip() for part in line.partition('='))
        if not name or name.startswith(('#', ';')):
            continue
        if sep and name.startswith('FIBOSMS_') and name[8:].replace('_', '').isalnum():
            quoted = len(value) > 1 and value[0] == value[-1] and value[0] in '"\''
            values[name] = value[1:-1] if quoted else value
        else:
            problems.append((number, 'not FIBOSMS_NAME=value: ignored'))
    return values, problems


def check_settings(settings):
    """The secret, or None; SettingError for one that leaves the page open: empty, an example
    value, or short (guessed; and found in real messages, which are then refused)."""
    token = settings.get('FIBOSMS_TOKEN')
    token = token.decode('utf-8') if isinstance(token, bytes) else token  # make_app(token=b'')
    text = (token or '').strip()
    for wrong, says in ((not text, 'is set but empty'), (text.lower() in PLACEHOLDER_TOKENS,
                        'is still the example value'), (len(token or '') < MIN_TOKEN,
                        'is shorter than %d characters' % MIN_TOKEN)):
        if token is not None and wrong:
            raise SettingError('FIBOSMS_TOKEN %s; set it to a long random secret' % says)
    return token


def local_caller(environ, remote):
    """Whether the caller is this machine: 127.0.0.0/8, ::1, ::ffff:127.x.y.z (ipaddress costs
    1.5 ms of a CGI push), and no proxy's header saying that it came from elsewhere."""
    address = remote.lower()[7:] if remote.lower().startswith('::ffff:') else remote
    parts = address.split('.')
    return not any(environ.get(name) for name in PROXY_HEADERS) and (address == '::1' or (
        len(parts) == 4 and parts[0] == '127' and all(p.isdigit() and int(p) < 256
                                                      for p in parts)))


def check_token(environ, pieces, token):
    """Reject(403) unless the secret is the URL's last path segment or a ``token`` parameter,
    its bytes (escapes undone) compared in constant time by hmac.compare_digest's function
    (Lib/hmac.py): importing hmac loads OpenSSL, 2 ms of CPU a CGI push (docs/AUDIT.md)."""
    if token is not None:
        path = environ.get('PATH_INFO', '').encode('latin-1')   # PEP 3333: bytes as latin-1
        offered = [path.rstrip(b'/').rpartition(b'/')[2]] + [
            as_bytes(value) for _, name, value in pieces if as_bytes(name) == b'token']
        if not any([compare_digest(token.encode('utf-8'), each) for each in offered]):
            raise Reject(403, 'wrong or missing token')


# -- Reading the push -------------------------------------------------------------------------

def read_push(environ, settings):
    """The push as a dict of storage's columns, once the caller is let in; else Reject."""
    remote, token = environ.get('REMOTE_ADDR', ''), check_settings(settings)
    if settings.get('FIBOSMS_ALLOW') or settings.get('FIBOSMS_TRUSTED_PROXIES'):
        import addresses    # who may call by address, where that is set
        remote = addresses.check(environ, settings)
    if token is None and not settings.get('FIBOSMS_ALLOW') and not local_caller(environ,
                                                                                remote):
        raise SettingError('neither FIBOSMS_TOKEN nor FIBOSMS_ALLOW is set, so only this'
                           ' machine may call; set FIBOSMS_TOKEN')
    environ['fibosms.client_address'] = remote      # for the small server's request log
    query = environ.get('QUERY_STRING', '').encode('latin-1')  # PEP 3333: bytes as latin-1
    pieces = pieces_of(query) if len(query) <= MAX_INPUT else []
    check_token(environ, pieces, token)     # before anything else the caller sent is judged
    if len(query) > MAX_INPUT:
        raise Reject(414, 'query string of %d bytes is over %d' % (len(query), MAX_INPUT))
    method = environ.get('REQUEST_METHOD', 'GET')
    if method not in ('GET', 'POST'):
        raise Reject(405, 'method %r not allowed' % method[:20])
    if method == 'POST':
        import post     # the gateway's pushes are GET: a POST's body is read by post.py
        pieces += pieces_of(post.read_body(environ, MAX_INPUT))
    charset, decoded = decode(pieces)
    params, kept, seen = {}, [], set()
    for piece, name, value in decoded:
        if name in seen:
            known = name in ('guid', 'phone', 'message', 'token')  # another name: text, secret?
            raise Reject(400, 'parameter %s given twice' % (repr(name) if known else '(extra)'))
        seen.add(name)
        if token and any(holds_secret(text, charset, token) for text in (name, value)):
            if name in ('guid', 'phone', 'message'):
                raise Reject(400, 'parameter %r holds the secret' % name)
        elif name != 'token':   # the secret and its copies are stored nowhere
            params[name] = value
            kept.append(piece)
    push = parse_push(params)
    push.update(charset=charset, remote_addr=remote or None,
                raw_query=b'&'.join(kept).decode('latin-1'))
    return push


def pieces_of(raw):
    """The ``(piece, name, value)`` of a query string or form, form encoding undone."""
    return [(piece, unescape(piece.partition(b'=')[0]), unescape(piece.partition(b'=')[2]))
            for piece in raw.split(b'&') if piece]


def decode(pieces):
    """``(charset, pieces)`` read as UTF-8, else Windows-1258 (Vietnamese), else Latin-1, one
    charset for the whole push: no push is refused for its encoding nor given U+FFFD."""
    for charset in CHARSETS:
        try:
            return charset, [(piece, join_parts(n, charset), join_parts(v, charset))
                             for piece, n, v in pieces]
        except UnicodeDecodeError:
            continue


def unescape(raw):
    """``+`` and %XX give bytes (read by `decode`), %uXXXX (legacy .NET encoders) a
    character: a list of bytes and str parts."""
    raw = raw.replace(b'+', b' ')
    if b'%' not in raw:
        return [raw]
    chunks = raw.split(b'%')
    parts, buf, i = [], bytearray(chunks[0]), 1
    while i < len(chunks):
        chunk, code = chunks[i], chunks[i][1:5]
        if chunk[:1] in (b'u', b'U') and len(code) == 4 and HEX.issuperset(code):
            point, rest = int(code, 16), chunk[5:]
            if 0xD800 <= point < 0xDC00 and i + 1 < len(chunks) and not rest:
                low = chunks[i + 1][1:5]    # a UTF-16 surrogate pair spans two escapes
                if (chunks[i + 1][:1] in (b'u', b'U') and len(low) == 4
                        and HEX.issuperset(low) and 0xDC00 <= int(low, 16) < 0xE000):
                    point = 0x10000 + ((point - 0xD800) << 10) + (int(low, 16) - 0xDC00)
                    i += 1
                    rest = chunks[i][5:]
            if 0xD800 <= point < 0xE000:    # a lone surrogate is no character: kept as sent
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
    return parts + [bytes(buf)]


def join_parts(parts, charset):     # str of unescape's parts, their bytes read as `charset`
    return ''.join(p if isinstance(p, str) else p.decode(charset) for p in parts)


def as_bytes(parts):                # bytes of unescape's parts, characters as UTF-8
    return b''.join(p if isinstance(p, bytes) else p.encode('utf-8') for p in parts)


def holds_secret(text, charset, secret):
    """Whether `text` (read as `charset`) holds `secret`, its bytes read in any of CHARSETS."""
    if secret in text:
        return True
    sent = text.encode(charset, 'replace')
    return max(secret) >= '\x80' and any(secret in sent.decode(other, 'replace')
                                          for other in CHARSETS)


def parse_push(params):
    """The push's columns from its decoded parameters; Reject(400) if it is malformed."""
    guid, phone = params.pop('guid', '').strip(), params.pop('phone', '').strip()
    message = params.pop('message', '')
    for name, value, most in (('guid', guid, MAX_GUID), ('phone', phone, MAX_PHONE)):
        if not value or len(value) > most:      # the guid, cut short, for the log line
            raise Reject(400, '%s of %d characters is over %d' % (name, len(value), most) if
                         value else '%s missing or empty' % name, guid[:MAX_GUID] or None)
    extra = '{}'
    if params:  # parameters the gateway may add: kept, never dropped
        import json
        extra = json.dumps(params, ensure_ascii=False, sort_keys=True)
    return {'guid': guid, 'phone': phone, 'phone_normalised': normalise_phone(phone),
            'message': message, 'extra': extra}


def normalise_phone(phone):
    """'0912 345 678', '+84912345678' -> '84912345678': a leading 0 is Vietnam's trunk prefix
    (84), '+' or '00' starts another country's number; None without digits."""
    digits = ''.join(c for c in phone if c in '0123456789')
    if not digits or phone.startswith('+'):
        return digits or None
    if digits.startswith('00'):
        return digits[2:]
    return '84' + digits[1:] if digits.startswith('0') else digits


# -- Storing, then the hook -------------------------------------------------------------------

def store(push, settings, environ, kept):
    """Commit the push, then run its hook (hooks.py, loaded only after the commit: nothing a
    hook needs keeps a push from being stored); return only when the answer is 2."""
    path, journal = settings['FIBOSMS_DB'], settings.get('FIBOSMS_JOURNAL')
    hooked = any(settings.get('FIBOSMS_' + n) for n in ('HANDLER', 'FORWARD_URL', 'REPLY'))
    ends = environ.get('fibosms.ends')      # serve_cgi's: the process ends after this push
    if not ends and not kept:
        try:
            import connections
            kept.append(connections.Kept())
        except ImportError:     # not uploaded: a connection a push, closed (3 fsyncs)
            kept.append(None)

    def use():
        return storage.Once(path, journal, close=not ends) if ends or not kept[0] else (
            kept[0].use(path, journal))
    claim = CGI_CLAIM if ends else storage.CLAIM_SECONDS
    try:
        with use() as conn:
            action, first = storage.deliver(conn, push, claim if hooked else None)
    except (storage.StorageError, sqlite3.Error, OSError) as exc:
        import ownerlog     # what the filesystem says, for the owner
        raise Reject(TRY_AGAIN, 'storage failed: %s: %s%s' % (
            type(exc).__name__, exc, ownerlog.diagnose(path)))
    if first and (first['phone'], first['message']) != (push['phone'], push['message']):
        import ownerlog
        ownerlog.log(environ, settings['FIBOSMS_CONFIG'], 'warning: guid %r delivered again'
                     ' with another phone or message; the first one is kept' % push['guid'])
    if action != 'done':
        try:
            import hooks    # only now, after the commit
        except ImportError:     # the message is stored all the same, and marked so
            failure = 'hook not started: hooks.py is not beside receiver.py: upload it'
            with use() as conn, storage.Transaction(conn):
                storage.record(conn, push['guid'], failure, ran=False)
        else:
            failure = hooks.after(action, use, push['guid'], settings, HOOK_WAIT)
        if failure:
            raise Reject(TRY_AGAIN, failure)


application = make_app()


# -- CGI --------------------------------------------------------------------------------------

# The CGI variables that carry the request's bytes (and their REDIRECT_ copies): latin-1 text
# of them in the environ (PEP 3333); the others stay as Python read them (a file name, say).
CGI_REQUEST_VARIABLES = frozenset((
    'SCRIPT_NAME', 'PATH_INFO', 'QUERY_STRING', 'REQUEST_METHOD', 'AUTH_TYPE',
    'CONTENT_TYPE', 'CONTENT_LENGTH', 'HTTPS', 'REMOTE_USER', 'REMOTE_IDENT'))


def serve_cgi(app=application):
    """Serve a CGI process's one request and end it with os._exit (storage.Once says why); for
    this module's apps, whose answer is one list, as CGIHandler costs 3.8 ms of CPU a push
    (docs/AUDIT.md; tests/test_cgi_gateway.py holds both to the same bytes)."""
    environ, encoding = {}, sys.getfilesystemencoding()
    for name, value in os.environ.items():      # wsgiref.handlers.read_environ's rule
        base = name.replace('REDIRECT_', '')
        if base in CGI_REQUEST_VARIABLES or base.startswith(('HTTP_', 'SSL_')):
            value = value.encode(encoding, 'surrogateescape').decode('latin-1')
        environ[name] = value
    stdin = sys.stdin.buffer.raw if sys.stdin is not None else io.BytesIO()  # None: fd 0 shut
    if environ.get('CONTENT_LENGTH') or environ.get('HTTP_TRANSFER_ENCODING'):
        import post
        stdin = post.CountedInput(stdin)
    environ.update({
        'wsgi.input': io.BufferedReader(stdin), 'wsgi.errors': sys.stderr,
        'wsgi.version': (1, 0), 'wsgi.multithread': False, 'wsgi.multiprocess': True,
        'wsgi.run_once': True, 'fibosms.ends': True,
        'wsgi.url_scheme': 'https' if environ.get('HTTPS') in ('yes', 'on', '1') else 'http'})
    started = []
    body = b''.join(app(environ, lambda status, headers, exc_info=None: started.extend(
        (status, headers))))
    sys.stdout.buffer.write(''.join(['Status: %s\r\n' % started[0]] + [
        '%s: %s\r\n' % header for header in started[1]] + ['\r\n']).encode('latin-1') + body)
    sys.stdout.buffer.flush()
    if hasattr(stdin, 'taken'):
        post.read_away(stdin, environ)
    import atexit
    atexit._run_exitfuncs()     # what a hook registered still runs; then no finalization
    sys.stderr.flush()
    os._exit(0)


def main():
    """``python3 receiver.py``: CGI where GATEWAY_INTERFACE is set, else the small server."""
    if 'GATEWAY_INTERFACE' in os.environ:
        serve_cgi()
    import smallserver
    return smallserver.main(make_app)


if __name__ == '__main__':
    sys.exit(main())
