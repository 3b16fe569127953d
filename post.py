"""What a request with a body needs: the POST form (`read_body`), and under CGI the rest of
the body read away once the answer is out (`read_away`).

Loaded only for a request with a body: FiboSMSGateway's pushes are GET. receiver.py calls
read_body once the caller is let in (the secret, in the path or the query string, is
checked before any byte of the body is read), and reads its form together with the query.

    200  try again (receiver.TRY_AGAIN): a body cut short, broken off or not received
         within the server's timeout, which the next try may well bring whole
    400  a Content-Length that is no number
    413  a body over receiver.MAX_INPUT (16 KiB), by its Content-Length or, chunked, once
         read that far
    415  a body that is not application/x-www-form-urlencoded
"""
import io
import select
import time

from receiver import TRY_AGAIN, Reject

FORM_TYPE = 'application/x-www-form-urlencoded'
MAX_READ_AWAY = 1024 * 1024     # bytes of an unread body a CGI process reads at its end,
READ_AWAY_SECONDS = 2.0         # for at most this long


def read_body(environ, most):
    """The POST body: at most `most` bytes, which must be a form (or nothing)."""
    length = environ.get('CONTENT_LENGTH', '').strip()
    if length:
        size = content_length(length)
        if size is None:
            raise Reject(400, 'Content-Length %r is not a number' % length[:20])
        if size > most:
            raise Reject(413, 'body of %d bytes is over %d' % (size, most))
        body = read_input(environ['wsgi.input'], size) if size else b''
        if len(body) < size:
            raise Reject(TRY_AGAIN, 'body ended after %d of %d bytes' % (len(body), size))
    elif environ.get('wsgi.input_terminated'):  # chunked: the server marks where it ends
        body = read_input(environ['wsgi.input'], most + 1)
        if len(body) > most:
            raise Reject(413, 'body is over %d bytes' % most)
    else:
        return b''
    kind = environ.get('CONTENT_TYPE', '').split(';')[0].strip().lower()
    if body and kind not in ('', FORM_TYPE):
        raise Reject(415, 'body of type %r is not a form' % kind[:40])
    return body


def content_length(text):
    """CONTENT_LENGTH as an int; None unless ASCII digits (int() takes '١٦' too), and few:
    int() refuses over 4300 digits since Python 3.11 (CVE-2020-10735)."""
    text = text.strip()
    if not text or text.strip('0123456789') or len(text) > 18:
        return None
    return int(text)


def read_input(stream, size):
    """Read the body; a client too slow (the server's timeout) or gone is refused."""
    try:
        return stream.read(size)
    except OSError as exc:  # socket.timeout is one; mod_wsgi raises OSError on a broken read
        raise Reject(TRY_AGAIN, 'body not received: %s' % type(exc).__name__)


class CountedInput(io.RawIOBase):
    """A CGI process's stdin (a raw file), counting the bytes taken from it."""

    def __init__(self, raw):
        self.raw, self.taken = raw, 0

    def readable(self):
        return True

    def readinto(self, buffer):
        count = self.raw.readinto(buffer)
        self.taken += count or 0
        return count


def read_away(stdin, environ):
    """Read what the application left of the body: the rest of CONTENT_LENGTH, or of a
    chunked body (Apache passes it on without one) up to its end; at most MAX_READ_AWAY bytes
    within READ_AWAY_SECONDS. A CGI script that exits with its input unread has mod_cgid
    reset the socket and the client lose the answer (AH00574); the bounds free the process
    from a client that sends slowly or never (Apache itself still waits for the body)."""
    length = content_length(environ.get('CONTENT_LENGTH', ''))
    if length is None and environ.get('HTTP_TRANSFER_ENCODING'):
        length = stdin.taken + MAX_READ_AWAY
    left = min((length or 0) - stdin.taken, MAX_READ_AWAY)
    deadline = time.monotonic() + READ_AWAY_SECONDS
    try:
        while left > 0:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([stdin.raw], [], [], wait)[0]:
                return
            chunk = stdin.raw.read(min(left, 65536))
            if not chunk:
                return
            left -= len(chunk)
    except OSError:     # the server closed it, or there is no stdin: nothing left to lose
        pass
