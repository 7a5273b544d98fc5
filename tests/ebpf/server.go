// HTTP test server for the eBPF accuracy and map tests (issue 5).
//
//	server PORT_FILE [NEXT_URL]
//
// Binds 127.0.0.1:0, writes the port to PORT_FILE, serves until killed.
// GET /api/orders/<id>: status 500 if id%10 == 0, 404 if id%10 == 1, else
// 200; sleeps 20 ms if id%10 == 9, else 2 ms. GET /hello: 200 at once
// (for load benchmarks). GET /work: 200 after a fixed amount of CPU work
// (64 SHA-256 rounds over 1 KiB; a handler that does something). GET /chain: calls NEXT_URL
// (if given) with a keep-alive client, then answers 200.
package main

import (
	"crypto/sha256"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

func main() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	next := ""
	if len(os.Args) > 2 {
		next = os.Args[2]
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	mux := http.NewServeMux()
	mux.HandleFunc("/api/orders/", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/api/orders/"))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		status := 200
		switch id % 10 {
		case 0:
			status = 500
		case 1:
			status = 404
		}
		if id%10 == 9 {
			time.Sleep(20 * time.Millisecond)
		} else {
			time.Sleep(2 * time.Millisecond)
		}
		w.Header().Set("Content-Length", "6")
		w.WriteHeader(status)
		w.Write([]byte("order\n"))
	})
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "6")
		w.Write([]byte("hello\n"))
	})
	mux.HandleFunc("/work", func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 1024)
		for i := 0; i < 64; i++ {
			sum := sha256.Sum256(buf)
			copy(buf, sum[:])
		}
		w.Header().Set("Content-Length", "6")
		w.Write([]byte("work!\n"))
	})
	mux.HandleFunc("/chain", func(w http.ResponseWriter, r *http.Request) {
		if next != "" {
			resp, err := client.Get(next)
			if err != nil {
				http.Error(w, err.Error(), 502)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		w.Write([]byte("ok\n"))
	})
	tmp := os.Args[1] + ".tmp"
	os.WriteFile(tmp, []byte(strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)), 0o644)
	os.Rename(tmp, os.Args[1])
	http.Serve(ln, mux)
}
