// Issue 12's measurement target: a large Go binary (many standard packages
// linked in, and the package bigbench/gen that the measure test generates:
// coral-agent/src/debug/tests.rs, `gen_package`) with a hot function. It
// prints "ready PID", waits for a line on stdin, then calls Add `calls`
// times and prints the ns per call; it repeats for each line until stdin
// closes. A line "nap ID US" calls Nap(ID, US) once instead and prints the
// call's duration as Nap measured it itself (monotonic clock, from its
// first statement to its last), in ns. A line "spin N" starts N goroutines
// that keep the CPUs busy until the program ends, and prints "spinning".
//
//	bigbench <calls>
package main

import (
	"archive/zip"
	"bufio"
	"crypto/x509"
	"debug/dwarf"
	"debug/elf"
	"debug/macho"
	"debug/pe"
	"go/doc"
	"go/format"
	"image/gif"
	"image/jpeg"
	"math/big"
	"net/http/pprof"
	"net/rpc"
	"net/smtp"
	"testing"
	"crypto/tls"
	"database/sql"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"go/parser"
	"go/token"
	"go/types"
	"html/template"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"time"

	"bigbench/gen"
)

//go:noinline
func Add(a, b int) int {
	return a + b
}

// napOwn[id]: the duration of Nap's call `id` as Nap measured it.
var napOwn = make([]int64, 1<<16)

//go:noinline
func Nap(id, us int) {
	t := time.Now()
	time.Sleep(time.Duration(us) * time.Microsecond)
	napOwn[id&(len(napOwn)-1)] = int64(time.Since(t))
}

var spun int64

//go:noinline
func spin() {
	x := int64(0)
	for {
		x++
		if x&(1<<20) != 0 {
			spun = x
		}
	}
}

var sink = []interface{}{
	tls.Client, sql.Open, json.Marshal, xml.Marshal, parser.ParseFile, token.NewFileSet,
	types.NewPackage, template.New, png.Decode, http.ListenAndServe, httptest.NewServer,
	regexp.MustCompile, zip.NewReader, x509.ParseCertificate, dwarf.New, elf.NewFile,
	macho.NewFile, pe.NewFile, doc.New, format.Source, gif.Decode, jpeg.Decode, big.NewInt,
	pprof.Index, rpc.NewServer, smtp.Dial, testing.Benchmark, gen.Table,
}

func main() {
	calls, _ := strconv.Atoi(os.Args[1])
	fmt.Println("ready", os.Getpid(), len(sink))
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var id, us int
		if _, err := fmt.Sscanf(in.Text(), "nap %d %d", &id, &us); err == nil {
			Nap(id, us)
			fmt.Println(napOwn[id&(len(napOwn)-1)], id)
			continue
		}
		if _, err := fmt.Sscanf(in.Text(), "spin %d", &us); err == nil {
			for i := 0; i < us; i++ {
				go spin()
			}
			fmt.Println("spinning")
			continue
		}
		t := time.Now()
		s := 0
		for i := 0; i < calls; i++ {
			s = Add(s, i)
		}
		fmt.Println(time.Since(t).Nanoseconds()/int64(calls), s)
	}
}
