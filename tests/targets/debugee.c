/* A C program for Coral's live-debugging tests (issue 12). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

__attribute__((noipa)) long add(long a, long b) { return a + b; }

__attribute__((noipa)) int classify(int n) {
	if (n < 0)
		return -1;
	if (n == 0)
		return 0;
	return n % 2 ? 1 : 2;
}

__attribute__((noipa)) size_t greet(const char *name, int times) {
	size_t n = 0;
	for (int i = 0; i < times; i++)
		n += strlen(name);
	return n;
}

int main(int argc, char **argv) {
	int period = argc > 2 ? atoi(argv[1]) : 20;
	int seconds = argc > 2 ? atoi(argv[2]) : 60;
	printf("ready %d\n", (int)getpid());
	fflush(stdout);
	time_t end = time(NULL) + seconds;
	long total = 0;
	for (int i = 0; time(NULL) < end; i++) {
		total += add(i, 2) + classify(i % 5 - 1) + (long)greet("coral", i % 3);
		usleep(period * 1000);
	}
	printf("done %ld\n", total);
	return 0;
}
