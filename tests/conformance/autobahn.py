#!/usr/bin/env python3
"""RFC 6455 conformance harness: Autobahn|Testsuite fuzzing-client case families 1-10.

A Python 3 (stdlib only, raw sockets) port of the fuzzing client of Autobahn|Testsuite 0.8.2 /
25.10.1 (autobahntestsuite/case/*.py, fuzzing.py) on top of the relevant parts of autobahn 0.10.9
(autobahn/websocket/protocol.py), which the real `wstest` runs on. The real client is Python 2
only; this port keeps its names (sendFrame, killAfter, expectedClose, closedByMe, ...) so that each
case below can be read side by side with its CaseN_M_K original:

  * the bytes sent, frame by frame (fin/rsv/opcode/payload, masked with a random key), written in
    one go, in `sync` writes (one frame per TCP write) or `chopsize` writes (so many octets per
    write, 10 us apart, like autobahn's send queue), with the same delays (continueLater,
    closeAfter, killAfter);
  * the expected events (echoed messages, pongs, the 6.4.x fail-fast "timeout" markers) and the
    close expectation (closedByMe, allowed close codes, requireClean, closedByWrongEndpointIsFatal);
  * the client's own protocol rules while receiving (frame validation, UTF-8 validation, close-code
    validation, closing handshake timers: 1 s for the close reply, 1 s for the server to drop TCP
    after the closing handshake);
  * the judgement of Case.onConnectionLost and the per-case overrides (7.x: a wrong close code is a
    failed case; 7.1.6 and 7.13.x are informational; 10.1.1 counts the frames sent).

Each case gets behavior (OK, NON-STRICT, INFORMATIONAL, FAILED) and behaviorClose (OK, WRONG CODE,
FAILED BY CLIENT, UNCLEAN, FAILED, INFORMATIONAL) as Autobahn does. A case FAILS when its behavior
is FAILED or its close behaviour is FAILED or UNCLEAN (what Autobahn's report paints red).

Usage: autobahn.py --url ws://127.0.0.1:9001/echo [--cases '1.* 2.*'] [--exclude '9.*']
                   [--outdir target/conformance] [--agent ferrocast] [--list]
Exit status: 0 when no case failed, 1 when any did, 2 on usage or connection errors.
"""

import argparse
import base64
import codecs
import hashlib
import heapq
import json
import os
import re
import selectors
import socket
import struct
import sys
import time
import urllib.parse
from collections import deque

# --------------------------------------------------------------------------------------------
# Outcomes (autobahntestsuite/case/case.py)
# --------------------------------------------------------------------------------------------
FAILED = "FAILED"
OK = "OK"
NON_STRICT = "NON-STRICT"
WRONG_CODE = "WRONG CODE"
UNCLEAN = "UNCLEAN"
FAILED_BY_CLIENT = "FAILED BY CLIENT"
INFORMATIONAL = "INFORMATIONAL"

# Close codes (autobahn.websocket.protocol.WebSocketProtocol)
CLOSE_STATUS_CODE_NORMAL = 1000
CLOSE_STATUS_CODE_GOING_AWAY = 1001
CLOSE_STATUS_CODE_PROTOCOL_ERROR = 1002
CLOSE_STATUS_CODE_INVALID_PAYLOAD = 1007
CLOSE_STATUS_CODES_ALLOWED = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011]

STATE_CONNECTING, STATE_OPEN, STATE_CLOSING, STATE_CLOSED = "CONNECTING", "OPEN", "CLOSING", "CLOSED"

# autobahn defaults used by the fuzzing client
OPEN_HANDSHAKE_TIMEOUT = 5.0
CLOSE_HANDSHAKE_TIMEOUT = 1.0        # we sent close first: the reply must come within 1 s
SERVER_CONNECTION_DROP_TIMEOUT = 1.0  # after the closing handshake the server must drop TCP within 1 s
QUEUED_WRITE_DELAY = 0.00001         # pause between queued (sync / chopped) writes
USER_AGENT = "AutobahnTestSuite/0.8.2-0.10.9"

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WIRELOG_MAX = 400                    # wire-log entries kept per case
WIRELOG_BYTES = 48                   # octets of each payload shown in the wire log


def xor_mask(data, mask):
    """Mask (or unmask) data with a 4-octet key; big-int XOR keeps 16 MiB payloads fast."""
    n = len(data)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def hexhead(data, n=WIRELOG_BYTES):
    h = bytes(data[:n]).hex()
    return h + ("..." if len(data) > n else "")


def b2a(data, n=64):
    """Printable form of a payload for reports (like fuzzing.asciiLogData)."""
    if isinstance(data, str):
        return data
    try:
        s = bytes(data).decode("utf-8")
        return s if len(s) <= n else s[:n] + "..."
    except UnicodeDecodeError:
        return "0x" + hexhead(data, n // 2)


class HandshakeError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# The client protocol: the parts of autobahn's WebSocketClientProtocol + FuzzingProtocol that the
# cases use, on a non-blocking socket driven by a small select loop with timers.
# --------------------------------------------------------------------------------------------
class Protocol:
    CLOSE_STATUS_CODE_NORMAL = CLOSE_STATUS_CODE_NORMAL
    CLOSE_STATUS_CODE_GOING_AWAY = CLOSE_STATUS_CODE_GOING_AWAY
    CLOSE_STATUS_CODE_PROTOCOL_ERROR = CLOSE_STATUS_CODE_PROTOCOL_ERROR
    CLOSE_STATUS_CODE_INVALID_PAYLOAD = CLOSE_STATUS_CODE_INVALID_PAYLOAD

    def __init__(self, url, case_cls, hard_timeout):
        u = urllib.parse.urlparse(url)
        if u.scheme != "ws":
            raise ValueError("only ws:// URLs are supported")
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.resource = (u.path or "/") + (("?" + u.query) if u.query else "")
        self.hard_timeout = hard_timeout
        self.t0 = time.monotonic()

        self.state = STATE_CONNECTING
        self.sock = None
        self.sel = None
        self.timers = []
        self.timer_seq = 0
        self.send_queue = deque()     # (octets, sync) waiting to be written
        self.write_not_before = 0.0
        self.rx = bytearray()
        self.rx_off = 0

        # autobahn connection state
        self.connectionWasOpen = False
        self.closedByMe = False
        self.failedByMe = False
        self.droppedByMe = False
        self.wasClean = False
        self.wasNotCleanReason = None
        self.wasServerConnectionDropTimeout = False
        self.wasCloseHandshakeTimeout = False
        self.localCloseCode = None
        self.localCloseReason = None
        self.remoteCloseCode = None
        self.remoteCloseReason = None
        self.closeHandshakeTimeoutCall = None
        self.serverConnectionDropTimeoutCall = None
        self.autoFragmentSize = 0

        # receiving
        self.current_frame = None
        self.inside_message = False
        self.message_is_binary = False
        self.message_data = []
        self.utf8_decoder = None
        self.utf8_ok = True

        # sending (beginMessage / beginMessageFrame / sendMessageFrameData)
        self.send_message_opcode = 1
        self.send_message_frame_mask = None
        self.send_message_frame_length = 0
        self.send_message_frame_ptr = 0
        self.send_message_begin = False

        self.txFrameStats = {}
        self.rxFrameStats = {}
        self.wirelog = []
        self.createWirelog = True
        self.caseStart = 0.0
        self.caseEnd = 0.0
        self.http_response = ""
        self.server_header = None
        self.lost_reason = None

        self.runCase = case_cls(self)

    # ---------------------------------------------------------------- wire log
    def log(self, *entry):
        if self.createWirelog and len(self.wirelog) < WIRELOG_MAX:
            self.wirelog.append((round(time.monotonic() - self.t0, 4),) + entry)

    def enableWirelog(self, enable):
        self.createWirelog = enable

    # ---------------------------------------------------------------- timers
    def call_later(self, delay, fun):
        self.timer_seq += 1
        entry = [time.monotonic() + delay, self.timer_seq, fun, True]
        heapq.heappush(self.timers, entry)
        return entry

    @staticmethod
    def cancel(entry):
        if entry is not None:
            entry[3] = False

    def continueLater(self, delay, fun, tag=None):
        self.log("CT", delay, tag)

        def run():
            if self.state != STATE_CLOSED:
                self.log("CTE", tag)
                fun()
        self.call_later(delay, run)

    def killAfter(self, delay):
        self.log("KL", delay)

        def run():
            if self.state != STATE_CLOSED:
                self.log("KLE")
                self.failConnection()
        self.call_later(delay, run)

    def closeAfter(self, delay):
        self.log("TI", delay)

        def run():
            if self.state != STATE_CLOSED:
                self.log("TIE")
                self.sendClose()
        self.call_later(delay, run)

    # ---------------------------------------------------------------- sending
    def sendData(self, data, sync=False, chopsize=None):
        if chopsize and chopsize > 0:
            for i in range(0, max(len(data), 1), chopsize):
                self.send_queue.append((data[i:i + chopsize], True))
        else:
            self.send_queue.append((data, sync))

    def sendFrame(self, opcode, payload=b"", fin=True, rsv=0, mask=None, payload_len=None,
                  chopsize=None, sync=False):
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if payload_len is not None:
            if len(payload) < 1:
                raise ValueError("cannot construct repeated payload from empty payload")
            pl = payload * (payload_len // len(payload)) + payload[:payload_len % len(payload)]
        else:
            pl = payload
        n = len(pl)
        b0 = (0x80 if fin else 0) | ((rsv % 8) << 4) | (opcode % 128)
        if mask is None:
            mask = os.urandom(4)
        if n <= 125:
            hdr = struct.pack("!BB", b0, 0x80 | n)
        elif n <= 0xFFFF:
            hdr = struct.pack("!BBH", b0, 0x80 | 126, n)
        else:
            hdr = struct.pack("!BBQ", b0, 0x80 | 127, n)
        self.txFrameStats[opcode] = self.txFrameStats.get(opcode, 0) + 1
        self.log("TF", opcode, fin, rsv, n, hexhead(pl), chopsize, sync)
        self.sendData(hdr + mask + xor_mask(pl, mask), sync, chopsize)

    def sendMessage(self, payload, isBinary=False, fragmentSize=None, sync=False):
        if self.state != STATE_OPEN:
            return
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        opcode = 2 if isBinary else 1
        pfs = fragmentSize if fragmentSize is not None else (self.autoFragmentSize or None)
        if pfs is None or len(payload) <= pfs:
            self.sendFrame(opcode=opcode, payload=payload, sync=sync)
            return
        # autobahn's loop: a payload that is a multiple of the fragment size ends with an
        # empty final frame
        n, i, first, done = len(payload), 0, True, False
        while not done:
            j = i + pfs
            if j > n:
                done = True
                j = n
            self.sendFrame(opcode=opcode if first else 0, payload=payload[i:j], fin=done, sync=sync)
            first = False
            i += pfs

    def beginMessage(self, isBinary=False):
        if self.state != STATE_OPEN:
            return
        self.send_message_opcode = 2 if isBinary else 1
        self.send_message_begin = True

    def beginMessageFrame(self, length):
        if self.state != STATE_OPEN:
            return
        self.send_message_frame_length = length
        self.send_message_frame_ptr = 0
        self.send_message_frame_mask = os.urandom(4)
        b0 = self.send_message_opcode if self.send_message_begin else 0   # no FIN bit
        self.send_message_begin = False
        if length <= 125:
            hdr = struct.pack("!BB", b0, 0x80 | length)
        elif length <= 0xFFFF:
            hdr = struct.pack("!BBH", b0, 0x80 | 126, length)
        else:
            hdr = struct.pack("!BBQ", b0, 0x80 | 127, length)
        self.txFrameStats[b0] = self.txFrameStats.get(b0, 0) + 1
        self.log("TFH", b0, False, 0, length)
        self.sendData(hdr + self.send_message_frame_mask)

    def sendMessageFrameData(self, payload, sync=False):
        if self.state != STATE_OPEN:
            return
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        room = self.send_message_frame_length - self.send_message_frame_ptr
        pl = payload[:room]
        # continue the mask where the previous chunk of this frame stopped
        off = self.send_message_frame_ptr % 4
        m = self.send_message_frame_mask
        rotated = m[off:] + m[:off]
        self.send_message_frame_ptr += len(pl)
        self.log("TD", len(pl), hexhead(pl))
        self.sendData(xor_mask(pl, rotated), sync=sync)

    def endMessage(self):
        if self.state != STATE_OPEN:
            return
        self.sendFrame(opcode=0, payload=b"", fin=True)

    def sendPong(self, payload):
        self.sendFrame(opcode=10, payload=payload)

    def sendCloseFrame(self, code=None, reasonUtf8=None, isReply=False):
        if self.state in (STATE_CLOSING, STATE_CLOSED):
            return
        payload = b""
        if code is not None:
            payload += struct.pack("!H", code)
        if reasonUtf8 is not None:
            payload += reasonUtf8 if isinstance(reasonUtf8, bytes) else reasonUtf8.encode("utf-8")
        self.sendFrame(opcode=8, payload=payload)
        self.state = STATE_CLOSING
        self.closedByMe = not isReply
        self.localCloseCode = code
        self.localCloseReason = reasonUtf8
        if self.closedByMe and CLOSE_HANDSHAKE_TIMEOUT > 0:
            self.closeHandshakeTimeoutCall = self.call_later(CLOSE_HANDSHAKE_TIMEOUT,
                                                             self.onCloseHandshakeTimeout)

    def sendClose(self, code=None, reason=None):
        if code is not None and code != 1000 and not 3000 <= code <= 4999:
            raise ValueError("invalid close code %d" % code)
        reasonUtf8 = None
        if reason is not None:
            reasonUtf8 = reason.encode("utf-8") if isinstance(reason, str) else reason
            if len(reasonUtf8) + 2 > 125:
                reasonUtf8 = reasonUtf8[:120] + b"..."
        self.sendCloseFrame(code=code, reasonUtf8=reasonUtf8, isReply=False)

    # ---------------------------------------------------------------- failing / closing
    def onCloseHandshakeTimeout(self):
        self.closeHandshakeTimeoutCall = None
        if self.state != STATE_CLOSED:
            self.log("EV", "close handshake timeout: no close reply within %.1f s" % CLOSE_HANDSHAKE_TIMEOUT)
            self.wasClean = False
            self.wasNotCleanReason = "peer did not respond (in time) in closing handshake"
            self.wasCloseHandshakeTimeout = True
            self.dropConnection(abort=True)

    def onServerConnectionDropTimeout(self):
        self.serverConnectionDropTimeoutCall = None
        if self.state != STATE_CLOSED:
            self.log("EV", "server did not drop TCP within %.1f s after the closing handshake"
                     % SERVER_CONNECTION_DROP_TIMEOUT)
            self.wasClean = False
            self.wasNotCleanReason = "server did not drop TCP connection (in time)"
            self.wasServerConnectionDropTimeout = True
            self.dropConnection(abort=True)

    def dropConnection(self, abort=False):
        if self.state != STATE_CLOSED:
            self.log("EV", "client drops TCP (abort=%s)" % abort)
            self.droppedByMe = True
            self.state = STATE_CLOSED
            if not abort:
                self.flush_blocking(0.5)
            self._close_socket(abort)

    def failConnection(self, code=CLOSE_STATUS_CODE_GOING_AWAY, reason="Going Away"):
        if self.state != STATE_CLOSED:
            self.log("EV", "client fails connection: %s %s" % (code, reason))
            self.failedByMe = True
            # the fuzzing client runs with failByDrop = False: fail by a closing handshake
            if self.state != STATE_CLOSING:
                self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123], isReply=False)
            else:
                self.dropConnection(abort=False)

    def protocolViolation(self, reason):
        self.log("EV", "server protocol violation: " + reason)
        self.failConnection(CLOSE_STATUS_CODE_PROTOCOL_ERROR, reason)
        return False

    def invalidPayload(self, reason):
        self.log("EV", "server sent invalid payload: " + reason)
        self.failConnection(CLOSE_STATUS_CODE_INVALID_PAYLOAD, reason)
        return False

    def onCloseFrame(self, code, reasonRaw):
        self.remoteCloseCode = code
        if code is not None and (code < 1000 or (1000 <= code <= 2999 and code not in CLOSE_STATUS_CODES_ALLOWED)
                                 or code >= 5000):
            self.protocolViolation("invalid close code %d" % code)
        if reasonRaw is None:
            self.remoteCloseReason = None
        else:
            try:
                self.remoteCloseReason = reasonRaw.decode("utf-8")
            except UnicodeDecodeError:
                self.invalidPayload("invalid close reason (non-UTF-8 payload)")
                self.remoteCloseReason = reasonRaw.decode("utf-8", "replace")
        if self.state == STATE_CLOSING:
            # the peer's reply to our close
            self.cancel(self.closeHandshakeTimeoutCall)
            self.closeHandshakeTimeoutCall = None
            self.wasClean = True
            self.serverConnectionDropTimeoutCall = self.call_later(SERVER_CONNECTION_DROP_TIMEOUT,
                                                                   self.onServerConnectionDropTimeout)
        elif self.state == STATE_OPEN:
            # the peer initiates the closing handshake: reply with 1000 (echoCloseCodeReason = False)
            self.wasClean = True
            self.sendCloseFrame(code=CLOSE_STATUS_CODE_NORMAL, isReply=True)
        else:
            self.wasClean = False

    # ---------------------------------------------------------------- receiving
    def process_incoming(self):
        """Parse the buffered octets into frames (autobahn processDataHybi, whole frames)."""
        buf = self.rx
        while self.state in (STATE_OPEN, STATE_CLOSING):
            off = self.rx_off
            avail = len(buf) - off
            if avail < 2:
                break
            b0, b1 = buf[off], buf[off + 1]
            fin = (b0 & 0x80) != 0
            rsv = (b0 & 0x70) >> 4
            opcode = b0 & 0x0F
            masked = (b1 & 0x80) != 0
            len1 = b1 & 0x7F
            hlen = 2 + (4 if masked else 0) + (2 if len1 == 126 else 8 if len1 == 127 else 0)
            if avail < hlen:
                break
            i = off + 2
            if len1 == 126:
                length = struct.unpack_from("!H", buf, i)[0]
                i += 2
            elif len1 == 127:
                length = struct.unpack_from("!Q", buf, i)[0]
                i += 8
            else:
                length = len1
            if avail < hlen + length:
                break
            if self.current_frame is None:
                # header checks, once per frame (a violation fails the connection by a closing
                # handshake and processing goes on, as with failByDrop = False)
                self.current_frame = True
                if rsv != 0:
                    self.protocolViolation("RSV = %d and no extension negotiated" % rsv)
                if masked:
                    self.protocolViolation("masked server-to-client frame")
                if opcode > 7:
                    if not fin:
                        self.protocolViolation("fragmented control frame")
                    if len1 > 125:
                        self.protocolViolation("control frame with payload length > 125 octets")
                    if opcode not in (8, 9, 10):
                        self.protocolViolation("control frame using reserved opcode %d" % opcode)
                    if opcode == 8 and len1 == 1:
                        self.protocolViolation("received close control frame with payload len 1")
                else:
                    if opcode not in (0, 1, 2):
                        self.protocolViolation("data frame using reserved opcode %d" % opcode)
                    if not self.inside_message and opcode == 0:
                        self.protocolViolation("received continuation data frame outside fragmented message")
                    if self.inside_message and opcode != 0:
                        self.protocolViolation("received non-continuation data frame while inside fragmented message")
                if len1 == 126 and length < 126:
                    self.protocolViolation("invalid data frame length (not using minimal length encoding)")
                if len1 == 127 and length < 65536:
                    self.protocolViolation("invalid data frame length (not using minimal length encoding)")
                if self.state == STATE_CLOSED:
                    break
            if masked:
                mask = bytes(buf[i:i + 4])
                i += 4
                payload = xor_mask(bytes(buf[i:i + length]), mask)
            else:
                payload = bytes(buf[i:i + length])
            self.rx_off = i + length
            self.current_frame = None
            self.rxFrameStats[opcode] = self.rxFrameStats.get(opcode, 0) + 1
            self.log("RF", opcode, fin, rsv, length, hexhead(payload))
            self.on_frame(opcode, fin, payload)
        if self.rx_off > 65536 and self.rx_off > len(buf) // 2:
            del buf[:self.rx_off]
            self.rx_off = 0

    def on_frame(self, opcode, fin, payload):
        if opcode > 7:
            if opcode == 8:
                code, reason = None, None
                if len(payload) > 1:
                    code = struct.unpack("!H", payload[:2])[0]
                    if len(payload) > 2:
                        reason = payload[2:]
                self.log("EV", "close received: code=%s reason=%r" % (code, reason))
                self.onCloseFrame(code, reason)
            elif opcode == 9:
                if self.state == STATE_OPEN:
                    self.sendPong(payload)
            elif opcode == 10:
                self.runCase.onPong(payload)
            return
        if not self.inside_message:
            self.inside_message = True
            self.message_is_binary = opcode == 2
            self.message_data = []
            self.utf8_ok = True
            self.utf8_decoder = codecs.getincrementaldecoder("utf-8")() if opcode == 1 else None
        # like autobahn's validator, one that failed stays failed: every later frame of the message
        # and its end fail the connection again (which, once closing, drops TCP)
        if self.utf8_decoder is not None:
            if self.utf8_ok:
                try:
                    self.utf8_decoder.decode(payload, False)
                except UnicodeDecodeError:
                    self.utf8_ok = False
            if not self.utf8_ok:
                self.invalidPayload("encountered invalid UTF-8 while processing text message")
        if not self.failedByMe:
            self.message_data.append(payload)
        if fin:
            if self.utf8_decoder is not None:
                if self.utf8_ok:
                    try:
                        self.utf8_decoder.decode(b"", True)
                    except UnicodeDecodeError:
                        self.utf8_ok = False
                if not self.utf8_ok:
                    self.invalidPayload("UTF-8 text message payload ended within Unicode code point")
            self.inside_message = False
            data = b"".join(self.message_data)
            self.message_data = []
            if not self.failedByMe:
                self.runCase.onMessage(data, self.message_is_binary)

    # ---------------------------------------------------------------- socket plumbing
    def _close_socket(self, abort):
        if self.sock is None:
            return
        try:
            self.sel.unregister(self.sock)
        except Exception:
            pass
        try:
            if abort:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass
        self.sock = None

    def flush_blocking(self, limit):
        """Write what is queued before a graceful drop (Twisted's loseConnection flushes)."""
        end = time.monotonic() + limit
        while self.send_queue and self.sock is not None and time.monotonic() < end:
            data, sync = self.send_queue[0]
            try:
                n = self.sock.send(data)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            except OSError:
                return
            if n < len(data):
                self.send_queue[0] = (data[n:], sync)
            else:
                self.send_queue.popleft()

    def handshake(self):
        key = base64.b64encode(os.urandom(16))
        req = ("GET %s HTTP/1.1\r\n"
               "User-Agent: %s\r\n"
               "Host: %s:%d\r\n"
               "Upgrade: WebSocket\r\n"
               "Connection: Upgrade\r\n"
               "Pragma: no-cache\r\n"
               "Cache-Control: no-cache\r\n"
               "Sec-WebSocket-Key: %s\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n") % (self.resource, USER_AGENT, self.host, self.port,
                                                       key.decode())
        self.sock.settimeout(OPEN_HANDSHAKE_TIMEOUT)
        self.sock.sendall(req.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise HandshakeError("connection closed during the opening handshake (got %r)" % data[:200])
            data += chunk
            if len(data) > 65536:
                raise HandshakeError("HTTP response header too long")
        head, rest = data.split(b"\r\n\r\n", 1)
        self.http_response = head.decode("latin-1")
        lines = self.http_response.split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[1] != "101":
            raise HandshakeError("opening handshake refused: %s" % lines[0])
        headers = {}
        for ln in lines[1:]:
            if ":" in ln:
                k, v = ln.split(":", 1)
                headers.setdefault(k.strip().lower(), v.strip())
        if "websocket" not in headers.get("upgrade", "").lower():
            raise HandshakeError("HTTP Upgrade header missing or not 'websocket'")
        if "upgrade" not in [x.strip().lower() for x in headers.get("connection", "").split(",")]:
            raise HandshakeError("HTTP Connection header missing or without 'upgrade'")
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            raise HandshakeError("Sec-WebSocket-Accept %r, expected %r"
                                 % (headers.get("sec-websocket-accept"), accept))
        if "sec-websocket-extensions" in headers:
            raise HandshakeError("server accepted an extension we did not offer: %s"
                                 % headers["sec-websocket-extensions"])
        if "sec-websocket-protocol" in headers:
            raise HandshakeError("server selected a subprotocol we did not offer: %s"
                                 % headers["sec-websocket-protocol"])
        self.server_header = headers.get("server")
        self.rx += rest

    def run(self):
        self.t0 = time.monotonic()
        try:
            self.sock = socket.create_connection((self.host, self.port), timeout=OPEN_HANDSHAKE_TIMEOUT)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.handshake()
        except (OSError, HandshakeError) as e:
            self.lost_reason = "opening handshake failed: %s" % e
            self.log("EV", self.lost_reason)
            self.state = STATE_CLOSED
            self._close_socket(True)
            self.connection_lost()
            return
        self.sock.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ)
        self.state = STATE_OPEN
        self.connectionWasOpen = True
        self.caseStart = time.time()
        deadline = time.monotonic() + self.hard_timeout
        self.runCase.onOpen()
        self.process_incoming()
        while self.sock is not None:
            now = time.monotonic()
            if now > deadline:
                self.log("EV", "harness hard timeout (%.0f s): dropping" % self.hard_timeout)
                self.lost_reason = "harness hard timeout"
                self.dropConnection(abort=True)
                break
            # timers
            while self.timers and self.timers[0][0] <= now:
                t = heapq.heappop(self.timers)
                if t[3]:
                    t[2]()
                if self.sock is None:
                    break
            if self.sock is None:
                break
            # writes
            want_write = False
            if self.send_queue and now >= self.write_not_before:
                want_write = self._write_some()
            if self.sock is None:
                break
            if self.send_queue and not want_write:
                # queued writes go out 10 us apart; epoll counts in milliseconds, so poll instead
                # of sleeping (Twisted's reactor does the same: its 10 us delay rounds down to 0)
                wait = 0.0
            else:
                wait = 0.2
            if self.timers:
                wait = min(wait, max(0.0, self.timers[0][0] - time.monotonic()))
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
            try:
                self.sel.modify(self.sock, events)
            except (ValueError, KeyError, OSError):
                pass
            ready = self.sel.select(wait)
            for key, mask in ready:
                if mask & selectors.EVENT_READ and self.sock is not None:
                    self._read_some()
        self.connection_lost()

    def _write_some(self):
        """Write from the send queue. Returns True when blocked by a full socket buffer."""
        while self.send_queue and self.sock is not None:
            data, sync = self.send_queue[0]
            if not sync:
                # coalesce consecutive plain writes (one transport.write each in Twisted, one
                # segment stream on the wire)
                parts = []
                while self.send_queue and not self.send_queue[0][1]:
                    parts.append(self.send_queue.popleft()[0])
                data = b"".join(parts) if len(parts) > 1 else parts[0]
                self.send_queue.appendleft((data, False))
            try:
                n = self.sock.send(data)
            except BlockingIOError:
                return True
            except OSError as e:
                self.log("EV", "send failed: %s" % e)
                self._lost(str(e))
                return False
            self.log("TO", n, hexhead(data[:n], 16), sync)
            if n < len(data):
                self.send_queue[0] = (data[n:], sync)
                return True
            self.send_queue.popleft()
            if sync:
                self.write_not_before = time.monotonic() + QUEUED_WRITE_DELAY
                return False
        return False

    def _read_some(self):
        try:
            chunk = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError as e:
            self.log("EV", "recv failed: %s" % e)
            self._lost(str(e))
            return
        if not chunk:
            self.log("EV", "server closed TCP")
            self._lost("server closed TCP")
            return
        self.log("RO", len(chunk), hexhead(chunk, 16))
        self.rx += chunk
        self.process_incoming()

    def _lost(self, reason):
        if self.lost_reason is None:
            self.lost_reason = reason
        self.state = STATE_CLOSED
        self._close_socket(False)

    def connection_lost(self):
        self.state = STATE_CLOSED
        self.cancel(self.serverConnectionDropTimeoutCall)
        if not self.wasClean and not self.droppedByMe and self.wasNotCleanReason is None:
            self.wasNotCleanReason = "peer dropped the TCP connection without previous WebSocket closing handshake"
        self.caseEnd = time.time()
        self.runCase.onConnectionLost(self.failedByMe)


# --------------------------------------------------------------------------------------------
# Case base (autobahntestsuite/case/case.py)
# --------------------------------------------------------------------------------------------
class Case:
    ID = None
    DESCRIPTION = ""
    EXPECTATION = ""

    def __init__(self, protocol):
        self.p = protocol
        self.received = []
        self.expected = {}
        self.expectedClose = {}
        self.behavior = FAILED
        self.behaviorClose = FAILED
        self.result = "Actual events differ from any expected."
        self.resultClose = "TCP connection was dropped without close handshake"
        self.reportTime = False
        self.suppressClose = False
        self.passed = False
        self.init()

    def init(self):
        pass

    def onOpen(self):
        pass

    def onMessage(self, msg, binary):
        self.received.append(("message", msg, binary))
        self.finishWhenDone()

    def onPong(self, payload):
        self.received.append(("pong", payload))
        self.finishWhenDone()

    def onConnectionLost(self, failedByMe):
        for e in self.expected:
            if self.received == self.expected[e]:
                self.behavior = e
                self.passed = True
                self.result = "Actual events match at least one expected."
                break
        p = self.p
        if p.connectionWasOpen:
            if self.expectedClose["closedByMe"] != p.closedByMe:
                self.behaviorClose = FAILED
                self.resultClose = "The connection was failed by the wrong endpoint"
            elif self.expectedClose["requireClean"] and not p.wasClean:
                self.behaviorClose = UNCLEAN
                self.resultClose = "The spec requires the connection to be failed cleanly here"
            elif p.remoteCloseCode is not None and p.remoteCloseCode not in self.expectedClose["closeCode"]:
                self.behaviorClose = WRONG_CODE
                self.resultClose = "The close code should have been %s or empty" % ",".join(
                    map(str, self.expectedClose["closeCode"]))
            elif p.droppedByMe:
                self.behaviorClose = FAILED_BY_CLIENT
                self.resultClose = "It is preferred that the server close the TCP connection"
            else:
                self.behaviorClose = OK
                self.resultClose = "Connection was properly closed"
            if self.expectedClose.get("closedByWrongEndpointIsFatal", False) and \
                    self.expectedClose["closedByMe"] != p.closedByMe:
                self.behavior = FAILED
        else:
            self.behaviorClose = FAILED
            self.resultClose = "The WebSocket opening handshake was never completed!"

    def finishWhenDone(self):
        for e in self.expected:
            if self.received != self.expected[e]:
                return
        if self.expectedClose["closedByMe"] and not self.suppressClose:
            self.p.sendClose(self.expectedClose["closeCode"][0])


CASES = []   # (id tuple, class), in the order of autobahntestsuite/case/__init__.py


def case(case_id, description, expectation):
    def deco(cls):
        c = type("Case" + case_id.replace(".", "_"), (cls,),
                 {"ID": case_id, "DESCRIPTION": description, "EXPECTATION": expectation})
        CASES.append((tuple(int(x) for x in case_id.split(".")), c))
        return cls
    return deco


def make(case_id, description, expectation, base, **attrs):
    attrs.update({"ID": case_id, "DESCRIPTION": description, "EXPECTATION": expectation})
    c = type("Case" + case_id.replace(".", "_"), (base,), attrs)
    CASES.append((tuple(int(x) for x in case_id.split(".")), c))


NORMAL_CLEAN = {"closedByMe": True, "closeCode": [CLOSE_STATUS_CODE_NORMAL], "requireClean": True}
FAIL_1002 = {"closedByMe": False, "closeCode": [CLOSE_STATUS_CODE_PROTOCOL_ERROR], "requireClean": False}
FAIL_1007 = {"closedByMe": False, "closeCode": [CLOSE_STATUS_CODE_INVALID_PAYLOAD], "requireClean": False,
             "closedByWrongEndpointIsFatal": True}


# --------------------------------------------------------------------------------------------
# 1  Framing (case1_1_*.py, case1_2_*.py)
# --------------------------------------------------------------------------------------------
class EchoCase(Case):
    """Send one frame, expect its echo, close normally (1.1.x, 1.2.x)."""
    OPCODE = 1
    PAYLOAD = b""
    CHOPSIZE = None
    KILL = 1

    def onOpen(self):
        self.expected[OK] = [("message", self.PAYLOAD, self.OPCODE == 2)]
        self.expectedClose = dict(NORMAL_CLEAN)
        self.p.sendFrame(opcode=self.OPCODE, payload=self.PAYLOAD, chopsize=self.CHOPSIZE)
        self.p.killAfter(self.KILL)


for _i, (_n, _kill, _chop) in enumerate([(0, 1, None), (125, 1, None), (126, 1, None), (127, 1, None),
                                         (128, 1, None), (65535, 10, None), (65536, 10, None),
                                         (65536, 10, 997)], 1):
    _sfx = " Sent out data in chops of 997 octets." if _chop else ""
    make("1.1.%d" % _i,
         ("Send text message with payload 0." if _n == 0 else
          "Send text message message with payload of length %d.%s" % (_n, _sfx)),
         "Receive echo'ed text message (with payload as sent). Clean close with normal code.",
         EchoCase, OPCODE=1, PAYLOAD=b"*" * _n, CHOPSIZE=_chop, KILL=_kill)
for _i, (_n, _kill, _chop) in enumerate([(0, 1, None), (125, 1, None), (126, 1, None), (127, 1, None),
                                         (128, 1, None), (65535, 10, None), (65536, 10, None),
                                         (65536, 10, 997)], 1):
    _sfx = " Sent out data in chops of 997 octets." if _chop else ""
    make("1.2.%d" % _i,
         ("Send binary message with payload 0." if _n == 0 else
          "Send binary message message with payload of length %d.%s" % (_n, _sfx)),
         "Receive echo'ed binary message (with payload as sent). Clean close with normal code.",
         EchoCase, OPCODE=2, PAYLOAD=b"\xfe" * _n, CHOPSIZE=_chop, KILL=_kill)


# --------------------------------------------------------------------------------------------
# 2  Pings/Pongs (case2_*.py)
# --------------------------------------------------------------------------------------------
class PingCase(Case):
    PAYLOAD = b""
    CHOPSIZE = None
    WAIT = 1

    def onOpen(self):
        self.expected[OK] = [("pong", self.PAYLOAD)]
        self.expectedClose = dict(NORMAL_CLEAN)
        self.p.sendFrame(opcode=9, payload=self.PAYLOAD, chopsize=self.CHOPSIZE)
        self.p.closeAfter(self.WAIT)


make("2.1", "Send ping without payload.",
     "Pong (with empty payload) is sent in reply to Ping. Clean close with normal code.", PingCase)
make("2.2", "Send ping with small text payload.",
     "Pong with payload echo'ed is sent in reply to Ping. Clean close with normal code.", PingCase,
     PAYLOAD=b"Hello, world!")
make("2.3", "Send ping with small binary (non UTF-8) payload.",
     "Pong with payload echo'ed is sent in reply to Ping. Clean close with normal code.", PingCase,
     PAYLOAD=b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff")
make("2.4", "Send ping with binary payload of 125 octets.",
     "Pong with payload echo'ed is sent in reply to Ping. Clean close with normal code.", PingCase,
     PAYLOAD=b"\xfe" * 125)


@case("2.5", "Send ping with binary payload of 126 octets.",
      "Connection is failed immediately (1002/Protocol Error), since control frames are only allowed "
      "to have payload up to and including 125 octets..")
class _Case2_5(Case):
    def onOpen(self):
        self.expected[OK] = []
        self.expectedClose = dict(FAIL_1002)
        self.p.sendFrame(opcode=9, payload=b"\xfe" * 126)
        self.p.killAfter(1)


make("2.6", "Send ping with binary payload of 125 octets, send in octet-wise chops.",
     "Pong with payload echo'ed is sent in reply to Ping. Implementations must be TCP clean. "
     "Clean close with normal code.", PingCase, PAYLOAD=b"\xfe" * 125, CHOPSIZE=1, WAIT=2)


class UnsolicitedPongCase(Case):
    PAYLOAD = b""

    def onOpen(self):
        self.expected[OK] = []
        self.expectedClose = dict(NORMAL_CLEAN)
        self.p.sendFrame(opcode=10, payload=self.PAYLOAD)
        self.p.sendClose(CLOSE_STATUS_CODE_NORMAL)
        self.p.closeAfter(1)


make("2.7", "Send unsolicited pong without payload. Verify nothing is received. Clean close with normal code.",
     "Nothing.", UnsolicitedPongCase)
make("2.8", "Send unsolicited pong with payload. Verify nothing is received. Clean close with normal code.",
     "Nothing.", UnsolicitedPongCase, PAYLOAD=b"unsolicited pong payload")


@case("2.9", "Send unsolicited pong with payload. Send ping with payload. Verify pong for ping is received.",
      "Nothing in reply to own Pong, but Pong with payload echo'ed in reply to Ping. Clean close with normal code.")
class _Case2_9(Case):
    def onOpen(self):
        payload = b"ping payload"
        self.expected[OK] = [("pong", payload)]
        self.expectedClose = dict(NORMAL_CLEAN)
        self.p.sendFrame(opcode=10, payload=b"unsolicited pong payload")
        self.p.sendFrame(opcode=9, payload=payload)
        self.p.closeAfter(1)


class TenPingsCase(Case):
    CHOPSIZE = None

    def onOpen(self):
        self.expected[OK] = []
        for i in range(10):
            payload = b"payload-%d" % i
            self.expected[OK].append(("pong", payload))
            self.p.sendFrame(opcode=9, payload=payload, chopsize=self.CHOPSIZE)
        self.expectedClose = dict(NORMAL_CLEAN)
        self.p.closeAfter(3)


_exp = ("Pongs for our Pings with all the payloads. Note: This is not required by the Spec .. but we check "
        "for this behaviour anyway. Clean close with normal code.")
make("2.10", "Send 10 Pings with payload.", _exp, TenPingsCase)
make("2.11", "Send 10 Pings with payload. Send out octets in octet-wise chops.", _exp, TenPingsCase, CHOPSIZE=1)


# --------------------------------------------------------------------------------------------
# 3  Reserved bits (case3_*.py)
# --------------------------------------------------------------------------------------------
class FailImmediatelyCase(Case):
    """Send the FRAMES; the server must fail the connection (1002), nothing echoed."""
    FRAMES = ()

    def onOpen(self):
        self.expected[OK] = []
        self.expectedClose = dict(FAIL_1002)
        for f in self.FRAMES:
            self.p.sendFrame(**f)
        self.p.killAfter(1)


class EchoThenFailCase(Case):
    """A good text message, then a bad frame, then a ping: echo expected (or nothing: non-strict),
    then the connection failed (1002) and no pong."""
    FRAMES = ()

    def onOpen(self):
        payload = b"Hello, world!"
        self.expected[OK] = [("message", payload, False)]
        self.expected[NON_STRICT] = []
        self.expectedClose = dict(FAIL_1002)
        for f in self.FRAMES:
            self.p.sendFrame(**f)
        self.p.killAfter(1)


_hw = b"Hello, world!"
make("3.1", "Send small text message with RSV = 1.",
     "The connection is failed immediately (1002/protocol error), since RSV must be 0, when no extension "
     "defining RSV meaning has been negotiated.", FailImmediatelyCase,
     FRAMES=[dict(opcode=1, payload=_hw, rsv=1)])
_exp = ("Echo for first message is received, but then connection is failed immediately, since RSV must be 0, "
        "when no extension defining RSV meaning has been negotiated. The Pong is not received.")
make("3.2", "Send small text message, then send again with RSV = 2, then send Ping.", _exp, EchoThenFailCase,
     FRAMES=[dict(opcode=1, payload=_hw), dict(opcode=1, payload=_hw, rsv=2), dict(opcode=9)])
make("3.3", "Send small text message, then send again with RSV = 3, then send Ping. Octets are sent in "
     "frame-wise chops. Octets are sent in octet-wise chops.", _exp, EchoThenFailCase,
     FRAMES=[dict(opcode=1, payload=_hw, sync=True), dict(opcode=1, payload=_hw, rsv=3, sync=True),
             dict(opcode=9, sync=True)])
make("3.4", "Send small text message, then send again with RSV = 4, then send Ping. Octets are sent in "
     "octet-wise chops.", _exp, EchoThenFailCase,
     FRAMES=[dict(opcode=1, payload=_hw, chopsize=1), dict(opcode=1, payload=_hw, rsv=4, chopsize=1),
             dict(opcode=9, chopsize=1)])
make("3.5", "Send small binary message with RSV = 5.", "The connection is failed immediately, since RSV must be 0.",
     FailImmediatelyCase, FRAMES=[dict(opcode=2, payload=b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff", rsv=5)])
make("3.6", "Send Ping with RSV = 6.", "The connection is failed immediately, since RSV must be 0.",
     FailImmediatelyCase, FRAMES=[dict(opcode=2, payload=_hw, rsv=6)])   # sic: opcode 2 in the original
make("3.7", "Send Close with RSV = 7.", "The connection is failed immediately, since RSV must be 0.",
     FailImmediatelyCase, FRAMES=[dict(opcode=8, rsv=7)])


# --------------------------------------------------------------------------------------------
# 4  Opcodes (case4_*.py)
# --------------------------------------------------------------------------------------------
_rop = b"reserved opcode payload"
_exp = ("Echo for first message is received, but then connection is failed immediately, since reserved opcode "
        "frame is used. A Pong is not received.")
make("4.1.1", "Send frame with reserved non-control Opcode = 3.", "The connection is failed immediately.",
     FailImmediatelyCase, FRAMES=[dict(opcode=3)])
make("4.1.2", "Send frame with reserved non-control Opcode = 4 and non-empty payload.",
     "The connection is failed immediately.", FailImmediatelyCase, FRAMES=[dict(opcode=4, payload=_rop)])
make("4.1.3", "Send small text message, then send frame with reserved non-control Opcode = 5, then send Ping.",
     _exp, EchoThenFailCase, FRAMES=[dict(opcode=1, payload=_hw), dict(opcode=5), dict(opcode=9)])
make("4.1.4", "Send small text message, then send frame with reserved non-control Opcode = 6 and non-empty "
     "payload, then send Ping.", _exp, EchoThenFailCase,
     FRAMES=[dict(opcode=1, payload=_hw), dict(opcode=6, payload=_hw), dict(opcode=9)])
make("4.1.5", "Send small text message, then send frame with reserved non-control Opcode = 7 and non-empty "
     "payload, then send Ping.", _exp, EchoThenFailCase,
     FRAMES=[dict(opcode=1, payload=_hw, chopsize=1), dict(opcode=7, payload=_hw, chopsize=1),
             dict(opcode=9, chopsize=1)])
make("4.2.1", "Send frame with reserved control Opcode = 11.", "The connection is failed immediately.",
     FailImmediatelyCase, FRAMES=[dict(opcode=11)])
make("4.2.2", "Send frame with reserved control Opcode = 12 and non-empty payload.",
     "The connection is failed immediately.", FailImmediatelyCase, FRAMES=[dict(opcode=12, payload=_rop)])
make("4.2.3", "Send small text message, then send frame with reserved control Opcode = 13, then send Ping.",
     _exp, EchoThenFailCase, FRAMES=[dict(opcode=1, payload=_hw), dict(opcode=13), dict(opcode=9)])
make("4.2.4", "Send small text message, then send frame with reserved control Opcode = 14 and non-empty "
     "payload, then send Ping.", _exp, EchoThenFailCase,
     FRAMES=[dict(opcode=1, payload=_hw), dict(opcode=14, payload=_hw), dict(opcode=9)])
make("4.2.5", "Send small text message, then send frame with reserved control Opcode = 15 and non-empty "
     "payload, then send Ping.", _exp, EchoThenFailCase,
     FRAMES=[dict(opcode=1, payload=_hw, chopsize=1), dict(opcode=15, payload=_hw, chopsize=1),
             dict(opcode=9, chopsize=1)])


# --------------------------------------------------------------------------------------------
# 5  Fragmentation (case5_*.py)
# --------------------------------------------------------------------------------------------
_ctrl_frag = "Connection is failed immediately, since control message MUST NOT be fragmented."
make("5.1", "Send Ping fragmented into 2 fragments.", _ctrl_frag, FailImmediatelyCase,
     FRAMES=[dict(opcode=9, fin=False, payload=b"fragment1"), dict(opcode=0, fin=True, payload=b"fragment2")])
make("5.2", "Send Pong fragmented into 2 fragments.", _ctrl_frag, FailImmediatelyCase,
     FRAMES=[dict(opcode=10, fin=False, payload=b"fragment1"), dict(opcode=0, fin=True, payload=b"fragment2")])


class FragmentedEchoCase(Case):
    """A fragmented text message (optionally with a ping in between) is echoed whole."""
    SYNC = False
    CHOPSIZE = None
    PING = False

    def onOpen(self):
        ping_payload = b"ping payload"
        fragments = [b"fragment1", b"fragment2"]
        self.expected[OK] = ([("pong", ping_payload)] if self.PING else []) + \
            [("message", b"".join(fragments), False)]
        self.expectedClose = dict(NORMAL_CLEAN)
        kw = dict(sync=self.SYNC, chopsize=self.CHOPSIZE)
        self.p.sendFrame(opcode=1, fin=False, payload=fragments[0], **kw)
        if self.PING:
            self.p.sendFrame(opcode=9, fin=True, payload=ping_payload, **kw)
        self.p.sendFrame(opcode=0, fin=True, payload=fragments[1], **kw)
        self.p.closeAfter(1)


make("5.3", "Send text Message fragmented into 2 fragments.", "Message is processed and echo'ed back to us.",
     FragmentedEchoCase)
make("5.4", "Send text Message fragmented into 2 fragments, octets are sent in frame-wise chops.",
     "Message is processed and echo'ed back to us.", FragmentedEchoCase, SYNC=True)
make("5.5", "Send text Message fragmented into 2 fragments, octets are sent in octet-wise chops.",
     "Message is processed and echo'ed back to us.", FragmentedEchoCase, CHOPSIZE=1)
make("5.6", "Send text Message fragmented into 2 fragments, one ping with payload in-between.",
     "A pong is received, then the message is echo'ed back to us.", FragmentedEchoCase, PING=True)
make("5.7", "Send text Message fragmented into 2 fragments, one ping with payload in-between. Octets are sent "
     "in frame-wise chops.", "A pong is received, then the message is echo'ed back to us.", FragmentedEchoCase,
     PING=True, SYNC=True)
make("5.8", "Send text Message fragmented into 2 fragments, one ping with payload in-between. Octets are sent "
     "in octet-wise chops.", "A pong is received, then the message is echo'ed back to us.", FragmentedEchoCase,
     PING=True, CHOPSIZE=1)

_nothing = "The connection is failed immediately, since there is no message to continue."
_nc, _hw2 = b"non-continuation payload", b"Hello, world!"
make("5.9", "Send unfragmented Text Message after Continuation Frame with FIN = true, where there is nothing to "
     "continue, sent in one chop.", _nothing, FailImmediatelyCase,
     FRAMES=[dict(opcode=0, fin=True, payload=_nc), dict(opcode=1, fin=True, payload=_hw2)])
make("5.10", "Send unfragmented Text Message after Continuation Frame with FIN = true, where there is nothing to "
     "continue, sent in per-frame chops.", _nothing, FailImmediatelyCase,
     FRAMES=[dict(opcode=0, fin=True, payload=_nc, sync=True), dict(opcode=1, fin=True, payload=_hw2, sync=True)])
make("5.11", "Send unfragmented Text Message after Continuation Frame with FIN = true, where there is nothing to "
     "continue, sent in octet-wise chops.", _nothing, FailImmediatelyCase,
     FRAMES=[dict(opcode=0, fin=True, payload=_nc, chopsize=1),
             dict(opcode=1, fin=True, payload=_hw2, chopsize=1)])
make("5.12", "Send unfragmented Text Message after Continuation Frame with FIN = false, where there is nothing to "
     "continue, sent in one chop.", _nothing, FailImmediatelyCase,
     FRAMES=[dict(opcode=0, fin=False, payload=_nc), dict(opcode=1, fin=True, payload=_hw2)])
make("5.13", "Send unfragmented Text Message after Continuation Frame with FIN = false, where there is nothing to "
     "continue, sent in per-frame chops.", _nothing, FailImmediatelyCase,
     FRAMES=[dict(opcode=0, fin=False, payload=_nc, sync=True),
             dict(opcode=1, fin=True, payload=_hw2, sync=True)])
make("5.14", "Send unfragmented Text Message after Continuation Frame with FIN = false, where there is nothing to "
     "continue, sent in octet-wise chops.", _nothing, FailImmediatelyCase,
     FRAMES=[dict(opcode=0, fin=False, payload=_nc, chopsize=1),
             dict(opcode=1, fin=True, payload=_hw2, chopsize=1)])


@case("5.15", "Send text Message fragmented into 2 fragments, then Continuation Frame with FIN = false where there "
      "is nothing to continue, then unfragmented Text Message, all sent in one chop.", _nothing)
class _Case5_15(Case):
    def onOpen(self):
        fragments = [b"fragment1", b"fragment2", b"fragment3", b"fragment4"]
        self.expected[OK] = [("message", b"".join(fragments[:2]), False)]
        self.expected[NON_STRICT] = []
        self.expectedClose = dict(FAIL_1002)
        self.p.sendFrame(opcode=1, fin=False, payload=fragments[0])
        self.p.sendFrame(opcode=0, fin=True, payload=fragments[1])
        self.p.sendFrame(opcode=0, fin=False, payload=fragments[2])
        self.p.sendFrame(opcode=1, fin=True, payload=fragments[3])
        self.p.killAfter(1)


_f = [dict(opcode=0, fin=False, payload=b"fragment1"), dict(opcode=1, fin=False, payload=b"fragment2"),
      dict(opcode=0, fin=True, payload=b"fragment3")]
make("5.16", "Repeated 2x: Continuation Frame with FIN = false (where there is nothing to continue), then text "
     "Message fragmented into 2 fragments.", _nothing, FailImmediatelyCase, FRAMES=_f * 2)
_f = [dict(opcode=0, fin=True, payload=b"fragment1"), dict(opcode=1, fin=False, payload=b"fragment2"),
      dict(opcode=0, fin=True, payload=b"fragment3")]
make("5.17", "Repeated 2x: Continuation Frame with FIN = true (where there is nothing to continue), then text "
     "Message fragmented into 2 fragments.", _nothing, FailImmediatelyCase, FRAMES=_f * 2)
make("5.18", "Send text Message fragmented into 2 fragments, with both frame opcodes set to text, sent in one chop.",
     "The connection is failed immediately, since all data frames after the initial data frame must have "
     "opcode 0.", FailImmediatelyCase,
     FRAMES=[dict(opcode=1, fin=False, payload=b"fragment1"), dict(opcode=1, fin=True, payload=b"fragment2")])


class Case5_19Base(Case):
    SYNC = False

    def onOpen(self):
        self.fragments = [b"fragment1", b"fragment2", b"fragment3", b"fragment4", b"fragment5"]
        self.pings = [b"pongme 1!", b"pongme 2!"]
        self.expected[OK] = [("pong", self.pings[0]), ("pong", self.pings[1]),
                             ("message", b"".join(self.fragments), False)]
        self.expectedClose = dict(NORMAL_CLEAN)
        self.p.sendFrame(opcode=1, fin=False, payload=self.fragments[0], sync=self.SYNC)
        self.p.sendFrame(opcode=0, fin=False, payload=self.fragments[1], sync=self.SYNC)
        self.p.sendFrame(opcode=9, fin=True, payload=self.pings[0], sync=self.SYNC)
        self.p.continueLater(1, self.part2)

    def part2(self):
        self.p.sendFrame(opcode=0, fin=False, payload=self.fragments[2], sync=self.SYNC)
        self.p.sendFrame(opcode=0, fin=False, payload=self.fragments[3], sync=self.SYNC)
        self.p.sendFrame(opcode=9, fin=True, payload=self.pings[1], sync=self.SYNC)
        self.p.sendFrame(opcode=0, fin=True, payload=self.fragments[4], sync=self.SYNC)
        self.p.closeAfter(1)


make("5.19", "A fragmented text message is sent in multiple frames. After sending the first 2 frames of the text "
     "message, a Ping is sent. Then we wait 1s, then we send 2 more text fragments, another Ping and then the "
     "final text fragment. Everything is legal.",
     "The peer immediately answers the first Ping before it has received the last text message fragment. The "
     "peer pong's back the Ping's payload exactly, and echo's the payload of the fragmented message back to us.",
     Case5_19Base)
make("5.20", "Same as Case 5.19, but send all frames with SYNC = True. Note, this does not change the octets sent "
     "in any way, only how the stream is chopped up on the wire.",
     "Same as Case 5.19. Implementations must be agnostic to how octet stream is chopped up on wire (must be "
     "TCP clean).", Case5_19Base, SYNC=True)


# --------------------------------------------------------------------------------------------
# 6  UTF-8 handling (case6_1_*, 6_2_*, 6_3_*, 6_4_*, case6_x_x.py)
# --------------------------------------------------------------------------------------------
class TextEchoCase(Case):
    """Send PAYLOAD as text (FRAGMENTS: explicit frame payloads; FRAGSIZE: sendMessage fragmentSize)."""
    PAYLOAD = b""
    FRAGMENTS = None
    FRAGSIZE = None

    def onOpen(self):
        self.expected[OK] = [("message", self.PAYLOAD, False)]
        self.expectedClose = dict(NORMAL_CLEAN)
        if self.FRAGMENTS is not None:
            for k, frag in enumerate(self.FRAGMENTS):
                self.p.sendFrame(opcode=1 if k == 0 else 0, fin=k == len(self.FRAGMENTS) - 1, payload=frag)
        else:
            self.p.sendMessage(self.PAYLOAD, isBinary=False, fragmentSize=self.FRAGSIZE)
        self.p.closeAfter(1)


make("6.1.1", "Send text message of length 0.", "A message is echo'ed back to us (with empty payload).",
     TextEchoCase, FRAGMENTS=[b""])
make("6.1.2", "Send fragmented text message, 3 fragments each of length 0.",
     "A message is echo'ed back to us (with empty payload).", TextEchoCase, FRAGMENTS=[b"", b"", b""])
make("6.1.3", "Send fragmented text message, 3 fragments, first and last of length 0, middle non-empty.",
     "A message is echo'ed back to us (with payload = payload of middle fragment).", TextEchoCase,
     PAYLOAD=b"middle frame payload", FRAGMENTS=[b"", b"middle frame payload", b""])

_hello_utf8 = "Hello-\u00b5@\u00df\u00f6\u00e4\u00fc\u00e0\u00e1-UTF-8!!".encode("utf-8")
_p1, _p2 = "Hello-\u00b5@\u00df\u00f6\u00e4".encode("utf-8"), "\u00fc\u00e0\u00e1-UTF-8!!".encode("utf-8")
_kosme = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"
make("6.2.1", "Send a valid UTF-8 text message in one fragment. MESSAGE: " + _hello_utf8.hex(),
     "The message is echo'ed back to us.", TextEchoCase, PAYLOAD=_hello_utf8)
make("6.2.2", "Send a valid UTF-8 text message in two fragments, fragmented on UTF-8 code point boundary.",
     "The message is echo'ed back to us.", TextEchoCase, PAYLOAD=_p1 + _p2, FRAGMENTS=[_p1, _p2])
make("6.2.3", "Send a valid UTF-8 text message in fragments of 1 octet, resulting in frames ending on positions "
     "which are not code point ends. MESSAGE: " + _hello_utf8.hex(), "The message is echo'ed back to us.",
     TextEchoCase, PAYLOAD=_hello_utf8, FRAGSIZE=1)
make("6.2.4", "Send a valid UTF-8 text message in fragments of 1 octet, resulting in frames ending on positions "
     "which are not code point ends. MESSAGE: " + _kosme.hex(), "The message is echo'ed back to us.",
     TextEchoCase, PAYLOAD=_kosme, FRAGSIZE=1)


class InvalidTextCase(Case):
    PAYLOAD = _kosme + b"\xed\xa0\x80" + b"\x65\x64\x69\x74\x65\x64"
    FRAGSIZE = None

    def onOpen(self):
        self.expected[OK] = []
        self.expectedClose = dict(FAIL_1007)
        self.p.sendMessage(self.PAYLOAD, isBinary=False, fragmentSize=self.FRAGSIZE)
        self.p.killAfter(1)


make("6.3.1", "Send invalid UTF-8 text message unfragmented. MESSAGE: " + InvalidTextCase.PAYLOAD.hex(),
     "The connection is failed immediately, since the payload is not valid UTF-8.", InvalidTextCase)
make("6.3.2", "Send invalid UTF-8 text message in fragments of 1 octet, resulting in frames ending on positions "
     "which are not code point ends. MESSAGE: " + InvalidTextCase.PAYLOAD.hex(),
     "The connection is failed immediately, since the payload is not valid UTF-8.", InvalidTextCase, FRAGSIZE=1)


class FailFastCase(Case):
    """6.4.x: valid part, wait 1 s ("timeout A"), the part making the text invalid, wait 1 s ("timeout B"),
    the rest. OK: the server fails the connection (1007) right after the invalid part; NON-STRICT: only
    at the end of the message."""
    PAYLOAD1 = _kosme
    PAYLOAD2 = b"\xf4\x90\x80\x80"   # 0x110000: UTF-8 encoding scheme, but out of the code point range
    PAYLOAD3 = b"\x65\x64\x69\x74\x65\x64"
    SPLIT = None       # None: PAYLOAD1/2/3; 12: PAYLOAD[:12], PAYLOAD[12:13], PAYLOAD[13:]
    ONE_FRAME = False  # True: three chops of one (non-FIN) frame, then an empty FIN continuation frame

    def parts(self):
        payload = self.PAYLOAD1 + self.PAYLOAD2 + self.PAYLOAD3
        if self.SPLIT is None:
            return self.PAYLOAD1, self.PAYLOAD2, self.PAYLOAD3
        return payload[:12], payload[12:13], payload[13:]

    def onOpen(self):
        self.part = self.parts()
        self.expected[OK] = [("timeout", "A")]
        self.expected[NON_STRICT] = [("timeout", "A"), ("timeout", "B")]
        self.expectedClose = dict(FAIL_1007)
        if self.ONE_FRAME:
            self.p.beginMessage()
            self.p.beginMessageFrame(sum(len(x) for x in self.part))
            self.p.sendMessageFrameData(self.part[0])
        else:
            self.p.sendFrame(opcode=1, fin=False, payload=self.part[0])
        self.p.continueLater(1, self.part2, "A")

    def part2(self):
        if self.p.state == STATE_OPEN:
            self.received.append(("timeout", "A"))
            if self.ONE_FRAME:
                self.p.sendMessageFrameData(self.part[1])
            else:
                self.p.sendFrame(opcode=0, fin=False, payload=self.part[1])
            self.p.continueLater(1, self.part3, "B")

    def part3(self):
        if self.p.state == STATE_OPEN:
            self.received.append(("timeout", "B"))
            if self.ONE_FRAME:
                self.p.sendMessageFrameData(self.part[2])
                self.p.endMessage()
            else:
                self.p.sendFrame(opcode=0, fin=True, payload=self.part[2])
            self.p.killAfter(1)


_ff = ("The first frame is accepted, we expect to timeout on the first wait. The 2nd frame should be rejected "
       "immediately (fail fast on UTF-8). If we timeout, we expect the connection is failed at least then, since "
       "the complete message payload is not valid UTF-8.")
make("6.4.1", "Send invalid UTF-8 text message in 3 fragments (frames). First frame payload is valid, then wait, "
     "then 2nd frame which contains the payload making the sequence invalid, then wait, then 3rd frame with rest. "
     "PART2 is 0x110000 encoded as in the UTF-8 integer encoding scheme (out of range).", _ff, FailFastCase)
make("6.4.2", "Same as Case 6.4.1, but in 2nd frame, we send only up to and including the octet making the "
     "complete payload invalid.", _ff, FailFastCase, SPLIT=12)
make("6.4.3", "Same as Case 6.4.1, but we send message not in 3 frames, but in 3 chops of the same message frame.",
     _ff.replace("frame", "chop"), FailFastCase, ONE_FRAME=True)
make("6.4.4", "Same as Case 6.4.2, but we send message not in 3 frames, but in 3 chops of the same message frame.",
     _ff.replace("frame", "chop"), FailFastCase, SPLIT=12, ONE_FRAME=True)


def create_utf8_test_sequences():
    """case6_x_x.createUtf8TestSequences (from Markus Kuhn's UTF-8-test.txt), octet for octet."""
    seqs = []
    vss = _kosme
    seqs.append(["Some valid UTF-8 sequences",
                 [(True, b"hello\x24world"), (True, b"hello\xc2\xa2world"), (True, b"hello\xe2\x82\xacworld"),
                  (True, b"hello\xf0\xa4\xad\xa2world"), (True, vss)]])

    def valid(b):
        try:
            b.decode("utf-8")
            return True
        except UnicodeDecodeError:
            return False
    seqs.append(["All prefixes of a valid UTF-8 string that contains multi-byte code points",
                 [(valid(vss[:i]), vss[:i]) for i in range(1, len(vss) + 1)]])
    seqs.append(["First possible sequence of a certain length",
                 [(True, b"\x00"), (True, b"\xc2\x80"), (True, b"\xe0\xa0\x80"), (True, b"\xf0\x90\x80\x80")]])
    seqs.append(["First possible sequence length 5/6 (invalid codepoints)",
                 [(False, b"\xf8\x88\x80\x80\x80"), (False, b"\xfc\x84\x80\x80\x80\x80")]])
    seqs.append(["Last possible sequence of a certain length",
                 [(True, b"\x7f"), (True, b"\xdf\xbf"), (True, b"\xef\xbf\xbf"), (True, b"\xf4\x8f\xbf\xbf")]])
    seqs.append(["Last possible sequence length 4/5/6 (invalid codepoints)",
                 [(False, b"\xf7\xbf\xbf\xbf"), (False, b"\xfb\xbf\xbf\xbf\xbf"), (False, b"\xfd\xbf\xbf\xbf\xbf\xbf")]])
    seqs.append(["Other boundary conditions",
                 [(True, b"\xed\x9f\xbf"), (True, b"\xee\x80\x80"), (True, b"\xef\xbf\xbd"),
                  (True, b"\xf4\x8f\xbf\xbf"), (False, b"\xf4\x90\x80\x80")]])
    seqs.append(["Unexpected continuation bytes",
                 [(False, b"\x80"), (False, b"\xbf"), (False, b"\x80\xbf"), (False, b"\x80\xbf\x80"),
                  (False, b"\x80\xbf\x80\xbf"), (False, b"\x80\xbf\x80\xbf\x80"),
                  (False, b"\x80\xbf\x80\xbf\x80\xbf"), (False, bytes(range(0x80, 0xbf)))]])
    lonely = []
    for lo, hi in [(0xc0, 0xdf), (0xe0, 0xef), (0xf0, 0xf7), (0xf8, 0xfb), (0xfc, 0xfd)]:
        lonely.append((False, b"".join(bytes([i, 0x20]) for i in range(lo, hi))))
    seqs.append(["Lonely start characters", lonely])
    k = [b"\xc0", b"\xe0\x80", b"\xf0\x80\x80", b"\xf8\x80\x80\x80", b"\xfc\x80\x80\x80\x80",
         b"\xdf", b"\xef\xbf", b"\xf7\xbf\xbf", b"\xfb\xbf\xbf\xbf", b"\xfd\xbf\xbf\xbf\xbf"]
    seqs.append(["Sequences with last continuation byte missing", [(False, kk) for kk in k]])
    seqs.append(["Concatenation of incomplete sequences", [(False, b"".join(k))]])
    seqs.append(["Impossible bytes", [(False, b"\xfe"), (False, b"\xff"), (False, b"\xfe\xfe\xff\xff")]])
    seqs.append(["Examples of an overlong ASCII character",
                 [(False, b"\xc0\xaf"), (False, b"\xe0\x80\xaf"), (False, b"\xf0\x80\x80\xaf"),
                  (False, b"\xf8\x80\x80\x80\xaf"), (False, b"\xfc\x80\x80\x80\x80\xaf")]])
    seqs.append(["Maximum overlong sequences",
                 [(False, b"\xc1\xbf"), (False, b"\xe0\x9f\xbf"), (False, b"\xf0\x8f\xbf\xbf"),
                  (False, b"\xf8\x87\xbf\xbf\xbf"), (False, b"\xfc\x83\xbf\xbf\xbf\xbf")]])
    seqs.append(["Overlong representation of the NUL character",
                 [(False, b"\xc0\x80"), (False, b"\xe0\x80\x80"), (False, b"\xf0\x80\x80\x80"),
                  (False, b"\xf8\x80\x80\x80\x80"), (False, b"\xfc\x80\x80\x80\x80\x80")]])
    seqs.append(["Single UTF-16 surrogates",
                 [(False, b"\xed\xa0\x80"), (False, b"\xed\xad\xbf"), (False, b"\xed\xae\x80"),
                  (False, b"\xed\xaf\xbf"), (False, b"\xed\xb0\x80"), (False, b"\xed\xbe\x80"),
                  (False, b"\xed\xbf\xbf")]])
    seqs.append(["Paired UTF-16 surrogates",
                 [(False, b"\xed\xa0\x80\xed\xb0\x80"), (False, b"\xed\xa0\x80\xed\xbf\xbf"),
                  (False, b"\xed\xad\xbf\xed\xb0\x80"), (False, b"\xed\xad\xbf\xed\xbf\xbf"),
                  (False, b"\xed\xae\x80\xed\xb0\x80"), (False, b"\xed\xae\x80\xed\xbf\xbf"),
                  (False, b"\xed\xaf\xbf\xed\xb0\x80"), (False, b"\xed\xaf\xbf\xed\xbf\xbf")]])
    nonchars = [(True, b"\xef\xbf\xbe"), (True, b"\xef\xbf\xbf")]
    for z1 in [0xf0, 0xf1, 0xf2, 0xf3, 0xf4]:
        for z2 in [0x8f, 0x9f, 0xaf, 0xbf]:
            if not (z1 == 0xf4 and z2 != 0x8f):
                for z3 in [0xbe, 0xbf]:
                    zz = bytes([z1, z2, 0xbf, z3])
                    if zz not in (b"\xf0\x8f\xbf\xbe", b"\xf0\x8f\xbf\xbf"):
                        nonchars.append((True, zz))
    seqs.append(["Non-character code points (valid UTF-8)", nonchars])
    seqs.append(["Unicode specials (i.e. replacement char)",
                 [(True, b"\xef\xbf\xb9"), (True, b"\xef\xbf\xba"), (True, b"\xef\xbf\xbb"), (True, b"\xef\xbf\xbc"),
                  (True, b"\xef\xbf\xbd"), (True, b"\xef\xbf\xbe"), (True, b"\xef\xbf\xbf")]])
    return seqs


class Utf8TableCase(Case):
    PAYLOAD = b""
    isValid = True

    def onOpen(self):
        if self.isValid:
            self.expected[OK] = [("message", self.PAYLOAD, False)]
            self.expectedClose = dict(NORMAL_CLEAN)
        else:
            self.expected[OK] = []
            self.expectedClose = dict(FAIL_1007)
        self.p.sendMessage(self.PAYLOAD, False)
        self.p.killAfter(0.5)


for _i, (_title, _seqs) in enumerate(create_utf8_test_sequences(), 5):
    for _j, (_valid, _pl) in enumerate(_seqs, 1):
        make("6.%d.%d" % (_i, _j),
             "%s: send a text message with payload which is %s UTF-8 in one fragment. Payload: 0x%s"
             % (_title, "valid" if _valid else "not valid", _pl.hex()),
             "The message is echo'ed back to us." if _valid else
             "The connection is failed immediately, since the payload is not valid UTF-8.",
             Utf8TableCase, PAYLOAD=_pl, isValid=_valid)


# --------------------------------------------------------------------------------------------
# 7  Close handling (case7_*.py)
# --------------------------------------------------------------------------------------------
class CloseCase(Case):
    """7.x base: a wrong close code makes the case fail (the onConnectionLost override of 7.1.x-7.9.x)."""

    def init(self):
        self.suppressClose = True

    def onConnectionLost(self, failedByMe):
        Case.onConnectionLost(self, failedByMe)
        if self.behaviorClose == WRONG_CODE:
            self.behavior = FAILED
            self.passed = False
            self.result = self.resultClose


@case("7.1.1", "Send a message followed by a close frame",
      "Echoed message followed by clean close with normal code.")
class _Case7_1_1(CloseCase):
    def init(self):
        pass   # not suppressed: the echo triggers our close

    def onOpen(self):
        payload = b"Hello World!"
        self.expected[OK] = [("message", payload, False)]
        self.expectedClose = dict(NORMAL_CLEAN)
        self.p.sendFrame(opcode=1, payload=payload)
        self.p.killAfter(1)


@case("7.1.2", "Send two close frames", "Clean close with normal code. Second close frame ignored.")
class _Case7_1_2(CloseCase):
    def onOpen(self):
        self.expected[OK] = []
        self.expectedClose = dict(NORMAL_CLEAN)
        self.p.sendClose(CLOSE_STATUS_CODE_NORMAL)
        self.p.sendFrame(opcode=8)
        self.p.killAfter(1)


@case("7.1.3", "Send a ping after close message", "Clean close with normal code, no pong.")
class _Case7_1_3(CloseCase):
    def onOpen(self):
        self.expected[OK] = []
        self.expectedClose = dict(NORMAL_CLEAN)
        self.p.sendClose(CLOSE_STATUS_CODE_NORMAL)
        self.p.sendFrame(opcode=9)
        self.p.killAfter(1)


@case("7.1.4", "Send text message after sending a close frame.", "Clean close with normal code. Text message ignored.")
class _Case7_1_4(CloseCase):
    def onOpen(self):
        self.expected[OK] = []
        self.expectedClose = dict(NORMAL_CLEAN)
        self.p.sendClose(CLOSE_STATUS_CODE_NORMAL)
        self.p.sendFrame(opcode=1, payload=b"Hello World!")
        self.p.killAfter(1)


@case("7.1.5", "Send message fragment1 followed by close then fragment", "Clean close with normal code.")
class _Case7_1_5(CloseCase):
    def onOpen(self):
        self.expected[OK] = []
        self.expectedClose = dict(NORMAL_CLEAN)
        self.p.sendFrame(opcode=1, fin=False, payload=b"fragment1")
        self.p.sendClose(CLOSE_STATUS_CODE_NORMAL)
        self.p.sendFrame(opcode=0, fin=True, payload=b"fragment2")
        self.p.killAfter(1)


@case("7.1.6", "Send 256K message followed by close then a ping",
      "Case outcome depends on implementation defined close behavior. Message and close frame are sent back to "
      "back. If the close frame is processed before the text message write is complete (as can happen in "
      "asynchronous processing models) the close frame is processed first and the text message may not be "
      "received or may only be partially received.")
class _Case7_1_6(Case):
    def init(self):
        self.suppressClose = True
        self.DATALEN = 256 * 2 ** 10
        self.PAYLOAD = b"BAsd7&jh23"

    def onConnectionLost(self, failedByMe):
        Case.onConnectionLost(self, failedByMe)
        self.passed = True
        if self.behavior == OK:
            self.result = "Text message was processed before close."
        elif self.behavior == NON_STRICT:
            self.result = "Close was processed before text message could be returned."
        self.behavior = INFORMATIONAL
        self.behaviorClose = INFORMATIONAL

    def onOpen(self):
        payload = b"Hello World!"
        self.expected[OK] = [("message", payload, False)]
        self.expected[NON_STRICT] = []
        self.expectedClose = dict(NORMAL_CLEAN)
        self.p.sendFrame(opcode=1, payload=self.PAYLOAD, payload_len=self.DATALEN)
        self.p.sendFrame(opcode=1, payload=payload)
        self.p.sendClose(CLOSE_STATUS_CODE_NORMAL)
        self.p.sendFrame(opcode=9)
        self.p.killAfter(1)


class CloseFrameCase(CloseCase):
    CODE = None
    REASON = None
    VIA_SEND_CLOSE = False
    EXPECT = NORMAL_CLEAN

    def onOpen(self):
        self.expected[OK] = []
        self.expectedClose = dict(self.EXPECT)
        if self.VIA_SEND_CLOSE:
            self.p.sendClose(self.CODE, self.REASON)
        else:
            self.p.sendCloseFrame(self.CODE, reasonUtf8=self.REASON)
        self.p.killAfter(1)


_pe_clean = {"closedByMe": True, "closeCode": [CLOSE_STATUS_CODE_PROTOCOL_ERROR], "requireClean": False}
make("7.3.1", "Send a close frame with payload length 0 (no close code, no close reason)",
     "Clean close with normal code.", CloseFrameCase)
make("7.3.2", "Send a close frame with payload length 1", "Clean close with protocol error or drop TCP.",
     CloseFrameCase, REASON=b"a", EXPECT=_pe_clean)
make("7.3.3", "Send a close frame with payload length 2 (regular close with a code)",
     "Clean close with normal code.", CloseFrameCase, CODE=1000, VIA_SEND_CLOSE=True)
make("7.3.4", "Send a close frame with close code and close reason", "Clean close with normal code.",
     CloseFrameCase, CODE=1000, REASON="Hello World!", VIA_SEND_CLOSE=True)
make("7.3.5", "Send a close frame with close code and close reason of maximum length (123)",
     "Clean close with normal code.", CloseFrameCase, CODE=1000, REASON="*" * 123, VIA_SEND_CLOSE=True)
make("7.3.6", "Send a close frame with close code and close reason which is too long (124) - total frame "
     "payload 126 octets", "Clean close with protocol error code or dropped TCP connection.",
     CloseFrameCase, CODE=1000, REASON=b"*" * 124, EXPECT=_pe_clean)
make("7.5.1", "Send a close frame with invalid UTF8 payload",
     "Clean close with protocol error or invalid utf8 code or dropped TCP.", CloseFrameCase, CODE=1000,
     REASON=_kosme + b"\xed\xa0\x80\x65\x64\x69\x74\x65\x64",
     EXPECT={"closedByMe": True, "closeCode": [CLOSE_STATUS_CODE_PROTOCOL_ERROR, CLOSE_STATUS_CODE_INVALID_PAYLOAD],
             "requireClean": False})


class ValidCloseCodeCase(CloseCase):
    CLOSE_CODE = 1000

    def init(self):
        pass   # the original 7.7.x does not suppress the automatic close

    def onOpen(self):
        self.expected[OK] = []
        self.expectedClose = {"closedByMe": True, "closeCode": [CLOSE_STATUS_CODE_NORMAL, self.CLOSE_CODE],
                              "requireClean": True}
        self.p.sendCloseFrame(self.CLOSE_CODE)
        self.p.killAfter(1)


for _i, _code in enumerate([1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999], 1):
    make("7.7.%d" % _i, "Send close with valid close code %d" % _code, "Clean close with normal or echoed code",
         ValidCloseCodeCase, CLOSE_CODE=_code)


class InvalidCloseCodeCase(CloseCase):
    CLOSE_CODE = 0

    def init(self):
        pass

    def onOpen(self):
        self.expected[OK] = []
        self.expectedClose = {"closedByMe": True, "closeCode": [CLOSE_STATUS_CODE_PROTOCOL_ERROR],
                              "requireClean": False}
        self.p.sendCloseFrame(self.CLOSE_CODE)
        self.p.killAfter(1)


for _i, _code in enumerate([0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999], 1):
    make("7.9.%d" % _i, "Send close with invalid close code %d" % _code,
         "Clean close with protocol error code or drop TCP", InvalidCloseCodeCase, CLOSE_CODE=_code)


class InformationalCloseCodeCase(Case):
    CLOSE_CODE = 5000

    def init(self):
        self.suppressClose = True

    def onConnectionLost(self, failedByMe):
        Case.onConnectionLost(self, failedByMe)
        self.passed = True
        self.behavior = INFORMATIONAL
        self.behaviorClose = INFORMATIONAL
        self.result = "Actual events are undefined by the spec."

    def onOpen(self):
        self.expected[OK] = []
        self.expectedClose = {"closedByMe": True,
                              "closeCode": [CLOSE_STATUS_CODE_NORMAL, self.CLOSE_CODE, CLOSE_STATUS_CODE_PROTOCOL_ERROR],
                              "requireClean": False}
        self.p.sendCloseFrame(self.CLOSE_CODE)
        self.p.killAfter(1)


make("7.13.1", "Send close with close code 5000", "Actual events are undefined by the spec.",
     InformationalCloseCodeCase, CLOSE_CODE=5000)
make("7.13.2", "Send close with close code 65535", "Actual events are undefined by the spec.",
     InformationalCloseCodeCase, CLOSE_CODE=65535)


# --------------------------------------------------------------------------------------------
# 9  Limits/Performance (case9_*.py)
# --------------------------------------------------------------------------------------------
class BigMessageCase(Case):
    """9.1-9.6: one big message (repeated PAYLOAD, or FRAGSIZE fragments, or CHOPSIZE writes) echoed back."""
    BINARY = False
    DATALEN = 0
    PAYLOAD = b""
    FRAGSIZE = None
    CHOPSIZE = None
    WAITSECS = 10

    def init(self):
        self.reportTime = True

    def onOpen(self):
        self.p.enableWirelog(False)
        self.behavior = FAILED
        self.expectedClose = dict(NORMAL_CLEAN)
        self.result = "Did not receive message within %d seconds." % self.WAITSECS
        if self.FRAGSIZE is not None:
            self.p.sendMessage(self.PAYLOAD * (self.DATALEN // len(self.PAYLOAD)), isBinary=self.BINARY,
                               fragmentSize=self.FRAGSIZE)
        else:
            self.p.sendFrame(opcode=2 if self.BINARY else 1, payload=self.PAYLOAD, payload_len=self.DATALEN,
                             chopsize=self.CHOPSIZE)
        self.p.closeAfter(self.WAITSECS)

    def onMessage(self, msg, binary):
        kind = "binary" if self.BINARY else "text"
        if binary != self.BINARY:
            self.result = "Expected %s message with payload, but got %s." % (kind, "binary" if binary else "text")
        elif len(msg) != self.DATALEN:
            self.result = "Expected %s message with payload of length %d, but got %d." % (kind, self.DATALEN, len(msg))
        else:
            self.behavior = OK
            self.result = "Received %s message of length %d." % (kind, len(msg))
        self.p.enableWirelog(True)
        self.p.sendClose(CLOSE_STATUS_CODE_NORMAL)


def _size(n):
    return "%dM" % (n >> 20) if n >= 1 << 20 else "%dk" % (n >> 10)


for _i, (_n, _w) in enumerate([(64 << 10, 10), (256 << 10, 10), (1 << 20, 100), (4 << 20, 100), (8 << 20, 100),
                               (16 << 20, 100)], 1):
    make("9.1.%d" % _i, "Send text message message with payload of length %s." % _size(_n),
         "Receive echo'ed text message (with payload as sent).", BigMessageCase,
         DATALEN=_n, PAYLOAD=b"BAsd7&jh23", WAITSECS=_w)
for _i, (_n, _w) in enumerate([(64 << 10, 10), (256 << 10, 10), (1 << 20, 10), (4 << 20, 10), (8 << 20, 100),
                               (16 << 20, 100)], 1):
    make("9.2.%d" % _i, "Send binary message message with payload of length %s." % _size(_n),
         "Receive echo'ed binary message (with payload as sent).", BigMessageCase, BINARY=True,
         DATALEN=_n, PAYLOAD=b"\x00\xfe\x23\xfa\xf0", WAITSECS=_w)
_frags = [64, 256, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20]
for _i, _fs in enumerate(_frags, 1):
    make("9.3.%d" % _i, "Send fragmented text message message with message payload of length 4M. Sent out in "
         "fragments of %s." % (_fs if _fs < 1024 else _size(_fs)),
         "Receive echo'ed text message (with payload as sent).", BigMessageCase,
         DATALEN=4 << 20, PAYLOAD=b"*", FRAGSIZE=_fs, WAITSECS=100)
for _i, _fs in enumerate(_frags, 1):
    make("9.4.%d" % _i, "Send fragmented binary message message with message payload of length 4M. Sent out in "
         "fragments of %s." % (_fs if _fs < 1024 else _size(_fs)),
         "Receive echo'ed binary message (with payload as sent).", BigMessageCase, BINARY=True,
         DATALEN=4 << 20, PAYLOAD=b"\xfe" if _i == 1 else b"*", FRAGSIZE=_fs, WAITSECS=100)
for _i, _cs in enumerate([64, 128, 256, 512, 1024, 2048], 1):
    make("9.5.%d" % _i, "Send text message message with payload of length 1M. Sent out data in chops of %d "
         "octets." % _cs, "Receive echo'ed text message (with payload as sent).", BigMessageCase,
         DATALEN=1 << 20, PAYLOAD=b"BAsd7&jh23", CHOPSIZE=_cs, WAITSECS=1000)
for _i, _cs in enumerate([64, 128, 256, 512, 1024, 2048], 1):
    make("9.6.%d" % _i, "Send binary message message with payload of length 1M. Sent out data in chops of %d "
         "octets." % _cs, "Receive echo'ed binary message (with payload as sent).", BigMessageCase, BINARY=True,
         DATALEN=1 << 20, PAYLOAD=b"\x00\xfe\x23\xfa\xf0", CHOPSIZE=_cs, WAITSECS=1000)


class RoundTripCase(Case):
    """9.7.x / 9.8.x: COUNT messages of LEN octets, one at a time, each sent when the previous echo arrived."""
    LEN = 0
    COUNT = 1000
    WAITSECS = 60
    BINARY = False

    def init(self):
        self.reportTime = True

    def onOpen(self):
        self.p.enableWirelog(False)
        self.behavior = FAILED
        self.expectedClose = dict(NORMAL_CLEAN)
        self.result = "Case did not finish within %d seconds." % self.WAITSECS
        self.p.closeAfter(self.WAITSECS)
        self.count = 0
        self.sendOne()

    def sendOne(self):
        if self.BINARY:
            self.p.sendFrame(opcode=2, payload=b"\xfe", payload_len=self.LEN)
        else:
            self.p.sendFrame(opcode=1, payload=b"*", payload_len=self.LEN)
        self.count += 1

    def onMessage(self, msg, binary):
        if binary != self.BINARY or len(msg) != self.LEN:
            self.behavior = FAILED
            self.result = ("Echo'ed message type or length differs from what I sent (got binary = %s, payload "
                           "length = %s)." % (binary, len(msg)))
            self.p.enableWirelog(True)
            self.p.sendClose(CLOSE_STATUS_CODE_NORMAL)
        elif self.count < self.COUNT:
            self.sendOne()
        else:
            self.behavior = OK
            self.result = "Ok, received all echo'ed messages in time."
            self.p.enableWirelog(True)
            self.p.sendClose(CLOSE_STATUS_CODE_NORMAL)


for _b, _fam in [(False, "9.7"), (True, "9.8")]:
    for _i, (_len, _cnt, _w) in enumerate([(0, 1000, 60), (16, 1000, 60), (64, 1000, 60), (256, 1000, 120),
                                           (1024, 1000, 240), (4096, 1000, 480)], 1):
        _mt = "binary" if _b else "text"
        make("%s.%d" % (_fam, _i), "Send %d %s messages of payload size %d to measure implementation/network RTT "
             "(round trip time) / latency." % (_cnt, _mt, _len),
             "Receive echo'ed %s messages (with payload as sent). Timeout case after %d secs." % (_mt, _w),
             RoundTripCase, LEN=_len, COUNT=_cnt, WAITSECS=_w, BINARY=_b)


# --------------------------------------------------------------------------------------------
# 10  Misc: auto-fragmentation (case10_1_1.py)
# --------------------------------------------------------------------------------------------
@case("10.1.1", "Send text message with payload of length 65536 auto-fragmented with autoFragmentSize = 1300.",
      "Receive echo'ed text message (with payload as sent and transmitted frame counts as expected). Clean close "
      "with normal code.")
class _Case10_1_1(Case):
    def onOpen(self):
        self.payload = b"*" * 65536
        self.p.autoFragmentSize = 1300
        self.expected[OK] = [("message", self.payload, False)]
        self.expectedClose = dict(NORMAL_CLEAN)
        self.p.sendMessage(self.payload)
        self.p.killAfter(10)

    def onConnectionLost(self, failedByMe):
        Case.onConnectionLost(self, failedByMe)
        if self.p.connectionWasOpen:
            expected = {0: len(self.payload) // self.p.autoFragmentSize,
                        1: 1 if len(self.payload) % self.p.autoFragmentSize > 0 else 0}
            got = {0: self.p.txFrameStats.get(0, 0), 1: self.p.txFrameStats.get(1, 0)}
            if expected != got:
                self.behavior = FAILED
                self.result = "Frames transmitted %s does not match what we expected %s." % (got, expected)
        else:
            self.behavior = FAILED
            self.result = "WebSocket connection was never open"


CASES.sort(key=lambda x: x[0])
assert len({t for t, _ in CASES}) == len(CASES), "duplicate case id"



# --------------------------------------------------------------------------------------------
# Running and reporting
# --------------------------------------------------------------------------------------------
def resolve(patterns):
    """Autobahn's case patterns: '*' is a wildcard, '.' literal ("1.*" matches 1.1.1 and 1.2.8)."""
    out = set()
    for pat in patterns:
        rx = re.compile("^" + re.escape(pat).replace(r"\*", ".*") + "$")
        for tid, cls in CASES:
            if rx.match(cls.ID):
                out.add(tid)
    return out


def select_cases(patterns, excludes):
    chosen = resolve(patterns) - resolve(excludes)
    return [cls for tid, cls in CASES if tid in chosen]


def verdict(behavior, behaviorClose):
    if behavior == FAILED or behaviorClose in (FAILED, UNCLEAN):
        return FAILED
    return behavior


def cleaned(events):
    out = []
    for e in events:
        if e[0] == "message":
            out.append(["message", b2a(e[1]), e[2], len(e[1])])
        elif e[0] in ("ping", "pong"):
            out.append([e[0], b2a(e[1]), len(e[1])])
        else:
            out.append(list(e))
    return out


def run_case(url, cls, hard_timeout):
    p = Protocol(url, cls, hard_timeout)
    started = time.time()
    p.run()
    c = p.runCase
    duration = int(round(1000.0 * ((p.caseEnd - p.caseStart) if p.caseStart else (time.time() - started))))
    res = {
        "id": cls.ID,
        "description": cls.DESCRIPTION,
        "expectation": cls.EXPECTATION,
        "behavior": c.behavior,
        "behaviorClose": c.behaviorClose,
        "verdict": verdict(c.behavior, c.behaviorClose),
        "duration": duration,
        "reportTime": c.reportTime,
        "result": c.result,
        "resultClose": c.resultClose,
        "expected": {k: cleaned(v) for k, v in c.expected.items()},
        "expectedClose": c.expectedClose,
        "received": cleaned(c.received),
        "closedByMe": p.closedByMe,
        "failedByMe": p.failedByMe,
        "droppedByMe": p.droppedByMe,
        "wasClean": p.wasClean,
        "wasNotCleanReason": p.wasNotCleanReason,
        "wasCloseHandshakeTimeout": p.wasCloseHandshakeTimeout,
        "wasServerConnectionDropTimeout": p.wasServerConnectionDropTimeout,
        "localCloseCode": p.localCloseCode,
        "localCloseReason": b2a(p.localCloseReason) if p.localCloseReason is not None else None,
        "remoteCloseCode": p.remoteCloseCode,
        "remoteCloseReason": p.remoteCloseReason,
        "connectionLost": p.lost_reason,
        "server": p.server_header,
        "txFrameStats": {str(k): v for k, v in sorted(p.txFrameStats.items())},
        "rxFrameStats": {str(k): v for k, v in sorted(p.rxFrameStats.items())},
        "wirelog": p.wirelog,
    }
    return res


def short(s, n):
    s = re.sub(r"\s+", " ", s)
    return s if len(s) <= n else s[:n - 3] + "..."


def explain(r):
    """A few lines on why a case failed: expected vs received, close state, and the wire log."""
    lines = ["  result:       %s" % r["result"],
             "  close:        %s (remote close code %s, closedByMe=%s, droppedByMe=%s, wasClean=%s%s)"
             % (r["resultClose"], r["remoteCloseCode"], r["closedByMe"], r["droppedByMe"], r["wasClean"],
                (", " + r["wasNotCleanReason"]) if r["wasNotCleanReason"] else ""),
             "  expected:     %s; close %s" % (json.dumps(r["expected"])[:300], json.dumps(r["expectedClose"])),
             "  received:     %s" % json.dumps(r["received"])[:300]]
    lines.append("  wire log (t s; TF/TFH/TD = frame/header/data sent, TO = octets written, RO = octets read, "
                 "RF = frame received [opcode, fin, rsv, len, payload hex], EV = event):")
    log = r["wirelog"]
    shown = log if len(log) <= 40 else log[:20] + [("...", "%d entries" % (len(log) - 40))] + log[-20:]
    for e in shown:
        lines.append("    " + " ".join(str(x) for x in e))
    return "\n".join(lines)


def write_reports(outdir, agent, results, started, elapsed):
    os.makedirs(outdir, exist_ok=True)
    index = {agent: {r["id"]: {"behavior": r["behavior"], "behaviorClose": r["behaviorClose"],
                               "duration": r["duration"], "remoteCloseCode": r["remoteCloseCode"],
                               "reportfile": "cases.json#" + r["id"]} for r in results}}
    with open(os.path.join(outdir, "index.json"), "w") as f:
        json.dump(index, f, indent=2, sort_keys=False)
    detail = []
    for r in results:
        d = dict(r)
        if d["verdict"] != FAILED and len(d["wirelog"]) > 60:
            d["wirelog"] = d["wirelog"][:30] + [["...", "%d entries" % (len(d["wirelog"]) - 60)]] + d["wirelog"][-30:]
        detail.append(d)
    with open(os.path.join(outdir, "cases.json"), "w") as f:
        json.dump({"agent": agent, "started": started, "elapsed_s": round(elapsed, 1), "cases": detail}, f, indent=1)
    counts = {}
    for r in results:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    failed = [r for r in results if r["verdict"] == FAILED]
    md = ["# RFC 6455 conformance run (Autobahn|Testsuite cases, port in tests/conformance/autobahn.py)", "",
          "- agent: `%s`" % agent,
          "- started: %s, took %.1f s" % (started, elapsed),
          "- cases: %d; %s" % (len(results), ", ".join("%s %d" % (k, v) for k, v in sorted(counts.items()))),
          "", "| case | description | behaviour | close behaviour | close code | duration |",
          "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        md.append("| %s | %s | %s | %s | %s | %d ms |" % (r["id"], short(r["description"], 70).replace("|", "/"),
                                                          r["behavior"], r["behaviorClose"],
                                                          r["remoteCloseCode"], r["duration"]))
    if failed:
        md += ["", "## Failed cases", ""]
        for r in failed:
            md += ["### %s" % r["id"], "", r["description"], "", "```", explain(r), "```", ""]
    with open(os.path.join(outdir, "summary.md"), "w") as f:
        f.write("\n".join(md) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="ws://127.0.0.1:9001/echo")
    ap.add_argument("--cases", default="1.* 2.* 3.* 4.* 5.* 6.* 7.* 9.* 10.*",
                    help="space/comma separated case patterns (Autobahn syntax)")
    ap.add_argument("--exclude", default="12.* 13.*", help="case patterns to leave out")
    ap.add_argument("--outdir", default="target/conformance")
    ap.add_argument("--agent", default="ferrocast")
    ap.add_argument("--hard-timeout", type=float, default=20.0,
                    help="per-case cap in seconds (the client drops the connection then)")
    ap.add_argument("--deadline", type=float, default=600.0,
                    help="overall limit in seconds; cases not started by then count as FAILED (not run)")
    ap.add_argument("--list", action="store_true", help="list the selected cases and exit")
    ap.add_argument("--quiet", action="store_true", help="print only failures and the totals")
    a = ap.parse_args(argv)

    cases = select_cases(a.cases.replace(",", " ").split(), a.exclude.replace(",", " ").split())
    if a.list:
        for c in cases:
            print("%-8s %s" % (c.ID, short(c.DESCRIPTION, 110)))
        print("%d cases" % len(cases))
        return 0
    if not cases:
        print("conformance: no case matches %r" % a.cases, file=sys.stderr)
        return 2

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    t0 = time.monotonic()
    results = []
    fmt = "%-8s %-62s %-13s %-16s %5s %7s"
    if not a.quiet:
        print(fmt % ("case", "description", "behaviour", "close behaviour", "code", "ms"))
    for c in cases:
        if time.monotonic() - t0 > a.deadline:
            r = {"id": c.ID, "description": c.DESCRIPTION, "expectation": c.EXPECTATION, "behavior": FAILED,
                 "behaviorClose": FAILED, "verdict": FAILED, "duration": 0, "reportTime": False,
                 "result": "not run: the run passed its overall limit of %.0f s" % a.deadline,
                 "resultClose": "not run", "expected": {}, "expectedClose": {}, "received": [],
                 "closedByMe": None, "failedByMe": None, "droppedByMe": None, "wasClean": None,
                 "wasNotCleanReason": None, "wasCloseHandshakeTimeout": None,
                 "wasServerConnectionDropTimeout": None, "localCloseCode": None, "localCloseReason": None,
                 "remoteCloseCode": None, "remoteCloseReason": None, "connectionLost": None, "server": None,
                 "txFrameStats": {}, "rxFrameStats": {}, "wirelog": []}
        else:
            r = run_case(a.url, c, a.hard_timeout)
        results.append(r)
        if r["behaviorClose"] == FAILED and r["resultClose"].startswith("The WebSocket opening handshake") \
                and len(results) == 1:
            print("conformance: cannot open %s: %s" % (a.url, r["connectionLost"]), file=sys.stderr)
        line = fmt % (r["id"], short(r["description"], 62), r["behavior"], r["behaviorClose"],
                      r["remoteCloseCode"] if r["remoteCloseCode"] is not None else "-", r["duration"])
        if not a.quiet or r["verdict"] == FAILED:
            print(line + ("   <-- FAILED" if r["verdict"] == FAILED else ""), flush=True)
    elapsed = time.monotonic() - t0
    write_reports(a.outdir, a.agent, results, started, elapsed)

    failed = [r for r in results if r["verdict"] == FAILED]
    for r in failed:
        print("\nFAILED %s: %s" % (r["id"], short(r["description"], 100)))
        print(explain(r))
    counts = {}
    for r in results:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    almost = [r["id"] for r in results
              if r["behaviorClose"] in (WRONG_CODE, FAILED_BY_CLIENT) and r["verdict"] != FAILED]
    print("\n%d cases in %.1f s: %s" % (len(results), elapsed,
                                         ", ".join("%s %d" % (k, v) for k, v in sorted(counts.items()))))
    if almost:
        print("close behaviour not strict (WRONG CODE / FAILED BY CLIENT, not failures): %s" % " ".join(almost))
    print("reports: %s/index.json, %s/cases.json, %s/summary.md" % (a.outdir, a.outdir, a.outdir))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
