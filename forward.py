"""Forward each stored message to the business's application, signed as Standard Webhooks.

When FIBOSMS_FORWARD_URL is set, forwarding is the processing hook (storage.process runs it
once the message is durably stored, under the same claim), and this module is imported; a
push without it never loads this file. The request (Standard Webhooks 1.0,
https://www.standardwebhooks.com, "Webhook headers" and "Signature scheme"):

    POST <FIBOSMS_FORWARD_URL>
    Content-Type: application/json
    User-Agent: fibosms-receiver
    webhook-id: <the guid>                the same on every retry: the application dedupes on it
    webhook-timestamp: <Unix seconds>     when this attempt was sent
    webhook-signature: v1,<base64 of HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>")>

    {"guid": ..., "phone": ..., "phone_normalised": ..., "message": ..., "received_at": ...,
     "deliveries": ..., "charset": ..., "extra": {...}}

The body is the stored row, compact JSON in UTF-8 (not ASCII-escaped): `message` is the
decoded text whatever its charset on the wire was (`charset` says which). The key is the
base64 after ``whsec_`` in FIBOSMS_FORWARD_SECRET, 24 to 64 random bytes. Without a secret
the request goes unsigned, with no webhook-signature (README: why that is a bad idea). A guid
of other characters than ASCII letters, digits, '-' and '_' (a GUID has no others) is sent
percent-encoded (UTF-8, '.' too) as webhook-id: the spec wants no '.' in the id, a header
carries no line break, and only an encoded id holds '%', so two guids never share an id.

The outcome, as for any hook:
    2xx             processed: the gateway gets <Status>2</Status>; never forwarded again
    anything else   ForwardError: the row is 'failed' with the reason in last_error, the
                    gateway gets <Status>1</Status> (HTTP 200: try again) and its retry
                    forwards again, as does `storage.py retry`. That is: another status; a
                    redirect (3xx, not followed: fix the URL); no answer within TIMEOUT; a
                    refused connection, a failed name lookup or TLS handshake.
https:// certificates are checked against the system's store, host name included; http://
is allowed (an application on the same machine). Only MAX_ANSWER bytes of the answer are
read. No proxy is taken from the environment: under CGI, HTTP_PROXY is the caller's own
`Proxy:` header (httpoxy, CVE-2016-5385).

A setting that cannot work (a URL that is not http(s)://host..., a malformed secret,
FIBOSMS_HANDLER set too) raises ConfigurationError when the hook runs: after the message is
stored, as a hook that will not import does.

An error's `summary` is the error log's line: the host and the status or error class; never
the message, the URL's path, query string or credentials, nor the secret (which no error
text holds). The rest of the reason (the answer's first bytes, the error's text) goes to
last_error only.
"""
import base64
import http.client
import json
import socket
import time
import urllib.parse

# -- Constants --------------------------------------------------------------------------------

TIMEOUT = 10.0      # seconds for a forward: under the hook's 20 s (receiver.HOOK_WAIT), so
                    # a hung application is recorded as a failure and its claim released
MAX_ANSWER = 4096   # bytes of the application's answer read; a failure keeps them in last_error
USER_AGENT = 'fibosms-receiver'
SECRET_PREFIX = 'whsec_'
SECRET_BYTES = (24, 64)     # the spec: "at least 24 bytes (192 bits, 512 maximum)"
FIELDS = ('guid', 'phone', 'phone_normalised', 'message', 'received_at', 'deliveries',
          'charset', 'extra')
ID_CHARACTERS = frozenset('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_')


class ForwardError(Exception):
    """A forward that failed. `summary` (host and status or error class) is safe to log;
    str() adds the detail for last_error."""

    def __init__(self, summary, detail=''):
        Exception.__init__(self, summary + detail)
        self.summary = summary


class ConfigurationError(ForwardError):
    """A forwarding setting that cannot work; the reason never quotes the secret or URL."""

    def __init__(self, reason):
        ForwardError.__init__(self, 'configuration: ' + reason)


# -- The hook ---------------------------------------------------------------------------------

class Forwarder:
    """The processing hook: ``Forwarder(url, secret)(message)`` returns once the application
    answered 2xx, else raises ForwardError. `message` is the stored row as storage.process
    gives it. `handler` is FIBOSMS_HANDLER's value: set too, it is a configuration error."""

    def __init__(self, url, secret=None, handler=None, timeout=TIMEOUT):
        self.url, self.secret, self.handler, self.timeout = url, secret, handler, timeout

    def __repr__(self):     # a traceback or a debugger never shows the secret
        return '<Forwarder>'

    def check(self):
        """(target, key) of the settings; ConfigurationError for one that cannot work."""
        if self.handler:
            raise ConfigurationError('FIBOSMS_FORWARD_URL and FIBOSMS_HANDLER are both set;'
                                     ' forwarding replaces the hook: unset one')
        return Target(self.url), secret_key(self.secret) if self.secret else None

    def __call__(self, message):
        target, key = self.check()
        body = payload(message)
        msg_id, timestamp = webhook_id(message['guid']), int(time.time())
        headers = {'Content-Type': 'application/json', 'User-Agent': USER_AGENT,
                   'Connection': 'close', 'webhook-id': msg_id,
                   'webhook-timestamp': str(timestamp)}
        if key is not None:
            headers['webhook-signature'] = sign(key, msg_id, timestamp, body)
        if target.authorization:
            headers['Authorization'] = target.authorization
        try:
            answer = post(target, headers, body, self.timeout)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # ValueError: Python 3.6's ssl.CertificateError (a host name not in the certificate)
            raise network_failure(target, exc, self.timeout) from None
        check_answer(target, answer)


def network_failure(target, exc, timeout):
    """The ForwardError for an exchange that ended in `exc`."""
    where = 'forward to %s: ' % target.where
    if isinstance(exc, socket.timeout):
        return ForwardError(where + 'no answer within %g s' % timeout)
    return ForwardError(where + type(exc).__name__, ': %s' % exc)


def check_answer(target, answer):
    """Return for a 2xx `answer` (status, reason, first bytes, Location); else ForwardError."""
    status, reason, text, location = answer
    where = 'forward to %s: ' % target.where
    if 200 <= status < 300:
        return
    if 300 <= status < 400:
        # Standard Webhooks, "Delivery success and failure": a redirect is a failure.
        raise ForwardError(where + 'HTTP %d, a redirect: not followed; fix FIBOSMS_FORWARD_URL'
                           % status, ' (Location: %s)' % (location or '').split('?')[0][:200])
    raise ForwardError(where + 'HTTP %d' % status, ' %s: %s' % (
        reason, text.decode('utf-8', 'replace').strip()))


# -- The request ------------------------------------------------------------------------------

class Target:
    """Where to POST, from FIBOSMS_FORWARD_URL: http(s)://[user:password@]host[:port]/path?query.
    ConfigurationError, which never quotes the URL (it may hold credentials), if unusable."""

    def __init__(self, url):
        if not url or any(not 32 < ord(c) < 127 for c in url):
            raise ConfigurationError('FIBOSMS_FORWARD_URL is empty or holds spaces, control or'
                                     ' non-ASCII characters: percent-encode them')
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError:  # a port that is no number or out of range, an unclosed [IPv6
            parts, port = None, -1
        if port == -1 or parts.scheme not in ('http', 'https') or not parts.hostname:
            raise ConfigurationError('FIBOSMS_FORWARD_URL is not http://host/path or'
                                     ' https://host/path (with a port from 1 to 65535, if any)')
        self.https = parts.scheme == 'https'
        self.host = parts.hostname
        self.port = port or (443 if self.https else 80)
        host = '[%s]' % self.host if ':' in self.host else self.host
        self.where = host + (':%d' % port if port else '')
        self.path = (parts.path or '/') + ('?' + parts.query if parts.query else '')
        self.authorization = None
        if parts.username is not None:   # HTTP Basic authentication, RFC 7617
            pair = '%s:%s' % (urllib.parse.unquote(parts.username),
                              urllib.parse.unquote(parts.password or ''))
            self.authorization = 'Basic ' + base64.b64encode(pair.encode('utf-8')).decode()


def post(target, headers, body, timeout):
    """POST `body` to `target`; return (status, reason, first MAX_ANSWER bytes, Location).

    Redirects are never followed (http.client does not). The connection is cut `timeout`
    seconds after the start: connecting (the name lookup aside) and then each read and write
    wait at most what is left, and a watchdog ends an answer that trickles in.
    Raises OSError or http.client.HTTPException (and, on Python 3.6, ssl.CertificateError,
    a ValueError); socket.timeout when the time ran out.
    """
    import threading
    deadline = time.monotonic() + timeout
    conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
    late = threading.Event()
    try:
        conn.sock = connect(target, deadline)
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout('timed out')
        conn.sock.settimeout(left)
        watchdog = threading.Timer(left, cut_off, (conn.sock, late))
        watchdog.daemon = True      # never what keeps a CGI process from ending
        watchdog.start()
        try:
            conn.request('POST', target.path, body, headers)
            response = conn.getresponse()
            return (response.status, response.reason, response.read(MAX_ANSWER),
                    response.getheader('Location'))
        finally:
            watchdog.cancel()
    except (OSError, http.client.HTTPException):
        if late.is_set():
            raise socket.timeout('timed out') from None
        raise
    finally:
        conn.close()


def connect(target, deadline):
    """A socket connected to `target` before `deadline`, over TLS (certificate checked
    against the system's store) for https. Its addresses are tried in turn, each given an
    equal share of the time left, so that one that never answers (an IPv6 address with no
    route, say) does not use it all, as http.client's own connect would, address by address.
    """
    infos = socket.getaddrinfo(target.host, target.port, 0, socket.SOCK_STREAM)
    error = socket.timeout('timed out')
    for n, (family, kind, proto, _, address) in enumerate(infos):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(left / (len(infos) - n))
            sock.connect(address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        if not target.https:
            return sock
        try:
            import ssl
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            return ssl.create_default_context().wrap_socket(sock,
                                                            server_hostname=target.host)
        except BaseException:
            sock.close()
            raise
    raise error


def cut_off(sock, late):
    """The watchdog: end the exchange on `sock` (a blocked read returns at once)."""
    late.set()
    try:
        # socket.socket's own shutdown, also for an SSLSocket: only the descriptor is touched,
        # not the TLS state the reading thread is using.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:     # closed meanwhile: the exchange is over anyway
        pass


def payload(message):
    """The request body: the message's FIELDS as compact UTF-8 JSON."""
    data = dict((name, message[name]) for name in FIELDS)
    if isinstance(data['extra'], str):
        data['extra'] = json.loads(data['extra'])
    return json.dumps(data, ensure_ascii=False, separators=(',', ':')).encode('utf-8')


def webhook_id(guid):
    """The guid itself when made of ID_CHARACTERS; else percent-encoded UTF-8, '.' included."""
    if all(c in ID_CHARACTERS for c in guid):
        return guid
    return ''.join(c if c in ID_CHARACTERS else
                   ''.join('%%%02X' % b for b in c.encode('utf-8')) for c in guid)


def sign(key, msg_id, timestamp, body):
    """webhook-signature: 'v1,' + base64 of HMAC-SHA256(key, b'<msg_id>.<timestamp>.<body>')."""
    import hashlib
    import hmac
    signed = b'.'.join((msg_id.encode('ascii'), str(timestamp).encode('ascii'), body))
    return 'v1,' + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def secret_key(secret):
    """The HMAC key in a ``whsec_<base64>`` secret; ConfigurationError, never quoting it."""
    key = b''
    if secret.startswith(SECRET_PREFIX):
        encoded = secret[len(SECRET_PREFIX):]
        try:
            # Padding may be left off, as the official libraries allow.
            key = base64.b64decode(encoded + '=' * (-len(encoded) % 4), validate=True)
        except ValueError:  # not base64 (binascii.Error), or not ASCII
            pass
    if not SECRET_BYTES[0] <= len(key) <= SECRET_BYTES[1]:
        raise ConfigurationError('FIBOSMS_FORWARD_SECRET is not whsec_ followed by the base64'
                                 ' of %d to %d random bytes' % SECRET_BYTES)
    return key
