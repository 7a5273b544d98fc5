// A Go program for Coral's live-debugging tests (issue 12): functions with
// arguments of each kind, several return instructions, recursion and a
// sleep, called in a loop until the deadline given on the command line. It
// also listens on a loopback TCP port (accepting and closing), so that it can
// be connected as a service; it prints "ready PID PORT".
//
//	debugee <period_ms> <seconds>
package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

//go:noinline
func Add(a int, b int) int {
	return a + b
}

//go:noinline
func Classify(n int) string {
	if n < 0 {
		return "negative"
	}
	if n == 0 {
		return "zero"
	}
	if n%2 == 0 {
		return "even"
	}
	return "odd"
}

//go:noinline
func Greet(name string, times int, loud bool) (string, error) {
	if times < 0 {
		return "", errors.New("negative times")
	}
	s := ""
	for i := 0; i < times; i++ {
		s += name
	}
	if loud {
		s += "!"
	}
	return s, nil
}

//go:noinline
func Checksum(data []byte) int {
	n := 0
	for _, b := range data {
		n += int(b)
	}
	return n
}

//go:noinline
func Fib(n int) int {
	if n < 2 {
		return n
	}
	return Fib(n-1) + Fib(n-2)
}

//go:noinline
func Nap(ms int) {
	time.Sleep(time.Duration(ms) * time.Millisecond)
}

func main() {
	period, seconds := 20, 60
	if len(os.Args) > 2 {
		period, _ = strconv.Atoi(os.Args[1])
		seconds, _ = strconv.Atoi(os.Args[2])
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	fmt.Println("ready", os.Getpid(), ln.Addr().(*net.TCPAddr).Port)
	deadline := time.Now().Add(time.Duration(seconds) * time.Second)
	total := 0
	for i := 0; time.Now().Before(deadline); i++ {
		total += Add(i, 2)
		_ = Classify(i%5 - 1)
		s, _ := Greet("coral", i%3, i%2 == 0)
		total += Checksum([]byte(s))
		total += Fib(5)
		Nap(period)
	}
	fmt.Println("done", total)
}
