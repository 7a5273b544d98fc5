// Issue 12's pairing target: rounds of 1,000 goroutines, each calling
// Work, whose recursion through Grow (256-byte frames) outgrows the initial
// goroutine stack so the runtime copies stacks mid-call; and Risky, which
// panics on every third call and is recovered by its caller (its return
// instructions never run for those calls).
//
//	goroutines <rounds> <start_delay_ms>
package main

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
)

//go:noinline
func Grow(n int) int {
	var buf [256]byte
	buf[n%256] = byte(n)
	if n == 0 {
		return int(buf[0])
	}
	return Grow(n-1) + int(buf[n%256])
}

//go:noinline
func Work(id int) int {
	return Grow(40) + id
}

//go:noinline
func Risky(i int) int {
	if i%3 == 0 {
		panic("boom")
	}
	return i
}

func safe(i int) (r int) {
	defer func() {
		if recover() != nil {
			r = -1
		}
	}()
	return Risky(i)
}

func main() {
	rounds, _ := strconv.Atoi(os.Args[1])
	delay, _ := strconv.Atoi(os.Args[2])
	fmt.Println("ready", os.Getpid())
	time.Sleep(time.Duration(delay) * time.Millisecond)
	total := 0
	var mu sync.Mutex
	for r := 0; r < rounds; r++ {
		var wg sync.WaitGroup
		for i := 0; i < 1000; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				v := Work(i)
				for k := 0; k < 3; k++ {
					v += safe(i*3 + k)
				}
				mu.Lock()
				total += v
				mu.Unlock()
			}(i)
		}
		wg.Wait()
	}
	fmt.Println("done", total)
	time.Sleep(time.Duration(delay) * time.Millisecond)
}
