// A Go net/http service (standard library only, no instrumentation) for
// Coral's live-debugging tests (issue 12). GET /api/inventory validates
// the query, looks the stock up and renders it; the lookup sleeps the
// milliseconds written in DELAY_FILE (read on every request), so the
// route's slowness is inside one of its own functions. GET /api/items
// answers after 3 ms. Prints "ready PID PORT".
//
//	slowapi DELAY_FILE
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

var delayFile string

//go:noinline
func validateQuery(q string) bool {
	return len(q) < 1024
}

//go:noinline
func lookupStock(item string) int {
	b, _ := os.ReadFile(delayFile)
	ms, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	time.Sleep(time.Duration(ms) * time.Millisecond)
	return len(item) * 7
}

//go:noinline
func renderStock(w http.ResponseWriter, n int) {
	fmt.Fprintf(w, "stock %d\n", n)
}

func handleInventory(w http.ResponseWriter, r *http.Request) {
	if !validateQuery(r.URL.RawQuery) {
		http.Error(w, "query too long", http.StatusBadRequest)
		return
	}
	renderStock(w, lookupStock(r.URL.Query().Get("item")))
}

func handleItems(w http.ResponseWriter, r *http.Request) {
	time.Sleep(3 * time.Millisecond)
	fmt.Fprintln(w, "ok")
}

func main() {
	delayFile = os.Args[1]
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	http.HandleFunc("/api/inventory", handleInventory)
	http.HandleFunc("/api/items", handleItems)
	fmt.Printf("ready %d %d\n", os.Getpid(), ln.Addr().(*net.TCPAddr).Port)
	http.Serve(ln, nil)
}
