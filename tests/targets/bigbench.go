// Issue 12's measurement target: a large Go binary (many standard packages
// linked in) with a hot function. It prints "ready PID", waits for a line
// on stdin, then calls Add `calls` times and prints the ns per call; it
// repeats for each line until stdin closes. A line "nap US" calls Nap(US)
// once instead and prints how long it took, in ns, as Go measured it.
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
)

//go:noinline
func Add(a, b int) int {
	return a + b
}

//go:noinline
func Nap(us int) {
	time.Sleep(time.Duration(us) * time.Microsecond)
}

var sink = []interface{}{
	tls.Client, sql.Open, json.Marshal, xml.Marshal, parser.ParseFile, token.NewFileSet,
	types.NewPackage, template.New, png.Decode, http.ListenAndServe, httptest.NewServer,
	regexp.MustCompile, zip.NewReader, x509.ParseCertificate, dwarf.New, elf.NewFile,
	macho.NewFile, pe.NewFile, doc.New, format.Source, gif.Decode, jpeg.Decode, big.NewInt,
	pprof.Index, rpc.NewServer, smtp.Dial, testing.Benchmark,
}

func main() {
	calls, _ := strconv.Atoi(os.Args[1])
	fmt.Println("ready", os.Getpid(), len(sink))
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var us int
		if _, err := fmt.Sscanf(in.Text(), "nap %d", &us); err == nil {
			t := time.Now()
			Nap(us)
			fmt.Println(time.Since(t).Nanoseconds(), 0)
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
