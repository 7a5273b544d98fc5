"""The HTTP/1.1 test server of server.py, peeking at every request before
reading it (`recv(MSG_PEEK)`, as servers that sniff a protocol do).

python3 peek_server.py PORT_FILE
A peek moves no bytes off the socket: the capture must not count them as
a read, or each request would be seen twice.
"""

import socket

import server


class Peeking(server.Handler):
    def handle_one_request(self):
        self.connection.recv(16, socket.MSG_PEEK)
        super().handle_one_request()


if __name__ == "__main__":
    server.main(Peeking)
