// A Go net/http service (standard library only) for Coral's live-debugging
// tests (issue 12) that sends its own OTLP server spans carrying the
// semantic-convention code attributes. GET /api/inventory is served by
// serveStock, which runs ten quick checks and then sleeps the milliseconds
// written in DELAY_FILE; its spans say code.namespace=main,
// code.function=serveStock, every other one code.function.name=main.gone
// (a function that is not in the binary). The spans go, as OTLP/HTTP JSON,
// to the address written in ENDPOINT_FILE (nothing is sent while it is
// empty). GET /api/items answers after 3 ms, without a span. Prints
// "ready PID PORT".
//
//	spanapi DELAY_FILE ENDPOINT_FILE
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

var delayFile, endpointFile string

//go:noinline
func checkA(q string) int { return len(q) + 1 }

//go:noinline
func checkB(q string) int { return len(q) + 2 }

//go:noinline
func checkC(q string) int { return len(q) + 3 }

//go:noinline
func checkD(q string) int { return len(q) + 4 }

//go:noinline
func checkE(q string) int { return len(q) + 5 }

//go:noinline
func checkF(q string) int { return len(q) + 6 }

//go:noinline
func checkG(q string) int { return len(q) + 7 }

//go:noinline
func checkH(q string) int { return len(q) + 8 }

//go:noinline
func checkI(q string) int { return len(q) + 9 }

//go:noinline
func checkJ(q string) int { return len(q) + 10 }

type attr struct {
	Key   string            `json:"key"`
	Value map[string]string `json:"value"`
}

func str(k, v string) attr { return attr{k, map[string]string{"stringValue": v}} }

func id(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

var spans = make(chan map[string]interface{}, 1024)
var served int64

// exportSpans posts the spans gathered every 200 ms.
func exportSpans() {
	for range time.Tick(200 * time.Millisecond) {
		var batch []map[string]interface{}
	drain:
		for {
			select {
			case s := <-spans:
				batch = append(batch, s)
			default:
				break drain
			}
		}
		b, _ := os.ReadFile(endpointFile)
		endpoint := strings.TrimSpace(string(b))
		if len(batch) == 0 || endpoint == "" {
			continue
		}
		body, _ := json.Marshal(map[string]interface{}{"resourceSpans": []interface{}{map[string]interface{}{
			"resource":   map[string]interface{}{"attributes": []attr{str("service.name", "api")}},
			"scopeSpans": []interface{}{map[string]interface{}{"scope": map[string]string{"name": "spanapi"}, "spans": batch}},
		}}})
		if r, err := http.Post("http://"+endpoint+"/v1/traces", "application/json", bytes.NewReader(body)); err == nil {
			r.Body.Close()
		}
	}
}

func serveStock(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	q := r.URL.RawQuery
	n := checkA(q) + checkB(q) + checkC(q) + checkD(q) + checkE(q) + checkF(q) + checkG(q) + checkH(q) + checkI(q) + checkJ(q)
	b, _ := os.ReadFile(delayFile)
	ms, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	time.Sleep(time.Duration(ms) * time.Millisecond)
	fmt.Fprintf(w, "stock %d\n", n)
	attrs := []attr{str("http.route", "/api/inventory"), str("http.request.method", "GET")}
	if atomic.AddInt64(&served, 1)%2 == 0 {
		attrs = append(attrs, str("code.namespace", "main"), str("code.function", "serveStock"))
	} else {
		attrs = append(attrs, str("code.function.name", "main.gone"))
	}
	end := time.Now()
	select {
	case spans <- map[string]interface{}{
		"traceId": id(16), "spanId": id(8), "name": "GET /api/inventory", "kind": 2,
		"startTimeUnixNano": strconv.FormatInt(start.UnixNano(), 10),
		"endTimeUnixNano":   strconv.FormatInt(end.UnixNano(), 10),
		"attributes":        attrs, "status": map[string]int{"code": 1},
	}:
	default:
	}
}

func handleItems(w http.ResponseWriter, r *http.Request) {
	time.Sleep(3 * time.Millisecond)
	fmt.Fprintln(w, "ok")
}

func main() {
	delayFile, endpointFile = os.Args[1], os.Args[2]
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go exportSpans()
	http.HandleFunc("/api/inventory", serveStock)
	http.HandleFunc("/api/items", handleItems)
	fmt.Printf("ready %d %d\n", os.Getpid(), ln.Addr().(*net.TCPAddr).Port)
	http.Serve(ln, nil)
}
