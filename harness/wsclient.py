"""A small synchronous WebSocket client for tests and benchmarks (websocket-client underneath).

simple-websocket's Client can leave a frame that arrived together with the
handshake response unread until the next frame, so tests use this instead.
"""

import json
import socket
import struct
import time

import websocket


class Closed(Exception):
    """The server closed the connection, with this code and reason."""

    def __init__(self, code, reason):
        super().__init__(f"closed: {code} {reason}")
        self.code = code
        self.reason = reason


class Rejected(Exception):
    """The server refused the upgrade with an ordinary HTTP response."""

    def __init__(self, status, body):
        super().__init__(f"rejected with {status}")
        self.status = status
        self.body = body


class WatchClient:
    def __init__(self, url, token=None, timeout=10):
        headers = [f"Coder-Session-Token: {token}"] if token else []
        try:
            self._ws = websocket.create_connection(url, timeout=timeout, header=headers)
        except websocket.WebSocketBadStatusException as error:
            raise Rejected(error.status_code, error.resp_body) from None
        self.pings = 0

    def receive(self, timeout=10):
        """The next JSON message; None when none came within ``timeout`` seconds; Closed when the server closed.

        The timeout is for the whole wait: pings keep arriving on an idle socket, and must not restart it.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._ws.settimeout(remaining)
            try:
                opcode, frame = self._ws.recv_data_frame(control_frame=True)
            except (websocket.WebSocketTimeoutException, socket.timeout):
                return None
            except websocket.WebSocketConnectionClosedException:
                raise Closed(None, "connection lost") from None
            if opcode == websocket.ABNF.OPCODE_PING:
                self.pings += 1  # websocket-client has already answered with a pong
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                self._ws.shutdown()  # close reply sent; now end the TCP connection, as browsers do
                raise Closed(*_close_payload(frame.data))
            elif opcode == websocket.ABNF.OPCODE_TEXT:
                return json.loads(frame.data.decode())

    def wait_until_closed(self, timeout=10):
        """Read (and drop) messages until the server closes; its Closed. AssertionError if it does not."""
        try:
            while self.receive(timeout=timeout) is not None:
                pass
        except Closed as closed:
            return closed
        raise AssertionError(f"the server did not close the socket within {timeout}s")

    def send_text(self, text):
        self._ws.send(text)

    def send_json(self, value):
        self._ws.send(json.dumps(value))

    def drop(self):
        """Vanish without a close frame, like a client whose network went away."""
        self._ws.sock.close()

    def close(self):
        try:
            self._ws.close(timeout=1)
        except (OSError, websocket.WebSocketException):
            pass


def _close_payload(data):
    if len(data) < 2:
        return None, ""
    return struct.unpack("!H", data[:2])[0], data[2:].decode(errors="replace")
