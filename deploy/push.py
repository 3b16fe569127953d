#!/usr/bin/env python3
"""Send one FiboSMS push to a receiving page, the way FiboSMSGateway does, and say what happened.

    python3 deploy/push.py URL --phone P --message M [--guid G] [--tries 5] [--wait 2]
                           [--cafile FILE]

FiboSMSGateway calls the page with ``GET URL?message=...&phone=...&guid=...`` (UTF-8,
percent-encoded, a space as ``+`` like .NET's HttpUtility.UrlEncode) and reads the page's
whole content as its answer:

    <Status>2</Status>   stored: the gateway never sends that SMS again
    <Status>1</Status>   failed: the gateway sends it again; it gives up after 5 tries

Anything else (another body, no answer, a network error) counts as a failed try too. This
script tries up to --tries times, --wait seconds apart, prints one line per try, and exits 0
only when the page answered <Status>2</Status>; 1 otherwise; 2 for a bad command line.

Run it against your page's real URL (https://..., with the secret in it) before you register
that URL at admin.fibosms.com. A certificate that is not publicly trusted yet (your own CA, a
test certificate) is trusted with --cafile FILE; nothing else is ever skipped. Each run without --guid makes a new guid, so it stores a new
row; run it twice with the same --guid to see that a resent SMS is stored once.

Standard library only; Python 3.6 or newer.
"""
import sys

# -- Settings ---------------------------------------------------------------------------------

TRIES = 5           # the gateway's limit: "it allows 5 failures"
WAIT = 2.0          # seconds between tries (the gateway's own interval is not published)
TIMEOUT = 30.0      # seconds to wait for one answer
MAX_BODY = 4096     # bytes of the answer read; the real one is 18
DONE = b'<Status>2</Status>'
RETRY = b'<Status>1</Status>'
USER_AGENT = 'fibosms-push-check/1 (emulating FiboSMSGateway)'


def push_url(url, message, phone, guid):
    """`url` with the push appended: ?message=...&phone=...&guid=... (or &... after a query)."""
    from urllib.parse import urlencode
    query = urlencode([('message', message), ('phone', phone), ('guid', guid)],
                      encoding='utf-8')
    return url + ('&' if '?' in url else '?') + query


def try_once(url, timeout, cafile=None):
    """One GET; return (HTTP status or None, body bytes or None, error text or None)."""
    import ssl
    import urllib.error
    import urllib.request
    request = urllib.request.Request(url, headers={'User-Agent': USER_AGENT})
    context = ssl.create_default_context(cafile=cafile) if url.startswith('https:') else None
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read(MAX_BODY), None
    except urllib.error.HTTPError as exc:   # 4xx/5xx still carry the page's answer
        try:
            body = exc.read(MAX_BODY)
        finally:
            exc.close()
        return exc.code, body, None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, 'reason', exc)
        return None, None, '%s: %s' % (type(reason).__name__, reason)


def describe(status, body, error):
    """One line about one try's outcome."""
    if error is not None:
        hint = ' (a certificate not publicly trusted? --cafile FILE)' if 'CERTIFICATE' in error else ''
        return 'no answer (%s)%s' % (error, hint)
    answer = body.strip()
    if answer == DONE:
        meaning = '<Status>2</Status>: stored; the gateway would not send it again'
    elif answer == RETRY:
        meaning = '<Status>1</Status>: failed; the gateway would send it again'
    else:
        meaning = 'not a FiboSMS status, counts as failed: %r' % body[:80]
    return 'HTTP %d %s' % (status, meaning)


def redact(url):
    """The URL for printing: no query string, and its last path segment, which may be the
    secret, as *** (as receiver.py logs it)."""
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    path = parts.path
    if path.strip('/'):
        path = path.rstrip('/').rpartition('/')[0] + '/***'
    return '%s://%s%s' % (parts.scheme, parts.netloc, path)


def main(argv=None):
    import argparse
    import time
    import uuid
    parser = argparse.ArgumentParser(
        description='Send one push to a FiboSMS receiving page, as FiboSMSGateway does.')
    parser.add_argument('url', help="the page's URL, e.g. https://example.com/fibosms/SECRET")
    parser.add_argument('--phone', required=True, help='the sender, e.g. 84912345678')
    parser.add_argument('--message', required=True, help='the SMS text')
    parser.add_argument('--guid', help='the gateway id of the SMS (default: a new random one)')
    parser.add_argument('--tries', type=int, default=TRIES,
                        help='give up after this many tries (%(default)s, as the gateway)')
    parser.add_argument('--wait', type=float, default=WAIT,
                        help='seconds between tries (%(default)s)')
    parser.add_argument('--timeout', type=float, default=TIMEOUT,
                        help='seconds to wait for each answer (%(default)s)')
    parser.add_argument('--cafile', help="trust this certificate (PEM) for the page's https,"
                                         ' besides the system\'s (a test or private one)')
    args = parser.parse_args(argv)
    if not args.url.startswith(('http://', 'https://')):
        parser.error('URL must start with http:// or https://')
    if args.tries < 1:
        parser.error('--tries must be 1 or more')
    if args.cafile:
        try:
            import ssl
            ssl.create_default_context(cafile=args.cafile)
        except (OSError, ssl.SSLError) as exc:
            parser.error('--cafile %s: %s' % (args.cafile, getattr(exc, 'strerror', None) or exc))
    guid = args.guid or str(uuid.uuid4())
    url = push_url(args.url, args.message, args.phone, guid)
    print('Pushing guid %s to %s' % (guid, redact(args.url)))
    for attempt in range(1, args.tries + 1):
        status, body, error = try_once(url, args.timeout, args.cafile)
        print('try %d of %d: %s' % (attempt, args.tries, describe(status, body, error)))
        sys.stdout.flush()
        if error is None and body.strip() == DONE:
            print('OK: the page stored the push.')
            return 0
        if attempt < args.tries:
            time.sleep(args.wait)
    print('FAILED: no <Status>2</Status> after %d %s; the gateway would drop this SMS.'
          % (args.tries, 'try' if args.tries == 1 else 'tries'))
    return 1


if __name__ == '__main__':
    sys.exit(main())
