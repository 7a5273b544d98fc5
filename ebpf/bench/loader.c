// Loads a Coral BPF object (a base or the current design), fills one ring
// buffer per CPU and drains them (records are counted, not parsed), follows
// one port, attaches every program of the object, and runs until stdin
// closes; then prints the programs' summed run_cnt and run_time_ns
// (kernel.bpf_stats_enabled=1), the records read and the records dropped.
// cgroup_skb programs (bench/cgskb.c) are attached to the cgroup v2
// directory named by $CGROUP. For ebpf/bench/cost.sh and floor.sh.
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <poll.h>
#include <fcntl.h>

static unsigned long long records;

static int count(void *ctx, void *data, size_t size)
{
	(void)ctx; (void)data; (void)size;
	records++;
	return 0;
}

int main(int argc, char **argv) {
	if (argc < 3) { fprintf(stderr, "usage: loader OBJ PORT\n"); return 64; }
	int port = atoi(argv[2]);
	struct bpf_object *o = bpf_object__open_file(argv[1], NULL);
	if (!o) return 1;
	if (bpf_object__load(o)) { fprintf(stderr, "load failed\n"); return 1; }
	int outer = bpf_object__find_map_fd_by_name(o, "rings");
	int ncpu = libbpf_num_possible_cpus();
	struct ring_buffer *rb = NULL;
	for (int c = 0; c < ncpu; c++) {
		int r = bpf_map_create(BPF_MAP_TYPE_RINGBUF, "r", 0, 0, 4 << 20, NULL);
		if (r < 0 || bpf_map_update_elem(outer, &c, &r, 0)) { fprintf(stderr, "rings\n"); return 1; }
		if (!rb)
			rb = ring_buffer__new(r, count, NULL, NULL);
		else
			ring_buffer__add(rb, r, count, NULL);
	}
	if (!rb) { fprintf(stderr, "ring_buffer__new\n"); return 1; }
	struct bpf_map *pm = bpf_object__find_map_by_name(o, "ports");
	size_t vs = bpf_map__value_size(pm);
	unsigned long long *v = calloc(1, vs);
	v[(port >> 6) & 1023] |= 1ULL << (port & 63);
	if (vs > 8192) v[1024] = 1; /* the new design's generation */
	unsigned int zero = 0;
	if (bpf_map_update_elem(bpf_map__fd(pm), &zero, v, 0)) { fprintf(stderr, "ports\n"); return 1; }
	struct bpf_program *p;
	const char *cg = getenv("CGROUP");
	int cgfd = cg ? open(cg, O_RDONLY | O_DIRECTORY) : -1;
	bpf_object__for_each_program(p, o) {
		struct bpf_link *l = bpf_program__type(p) == BPF_PROG_TYPE_CGROUP_SKB
			? bpf_program__attach_cgroup(p, cgfd) : bpf_program__attach(p);
		if (!l) { fprintf(stderr, "attach %s\n", bpf_program__name(p)); return 1; }
	}
	printf("ready\n"); fflush(stdout);
	/* Drain the rings every 100 ms (as the agent does) until stdin closes. */
	char buf[16];
	for (;;) {
		ring_buffer__poll(rb, 100);
		/* Like the agent: read what is there, woken or not (the
		 * programs wake the reader only when a ring fills past a
		 * quarter, a half, three quarters). */
		ring_buffer__consume(rb);
		struct pollfd in = { .fd = 0, .events = POLLIN };
		if (poll(&in, 1, 0) > 0 && read(0, buf, sizeof buf) <= 0)
			break;
	}
	ring_buffer__consume(rb);
	unsigned long long run_cnt = 0, run_ns = 0;
	bpf_object__for_each_program(p, o) {
		struct bpf_prog_info info = {}; __u32 len = sizeof info;
		bpf_obj_get_info_by_fd(bpf_program__fd(p), &info, &len);
		run_cnt += info.run_cnt;
		run_ns += info.run_time_ns;
	}
	/* Records dropped (rings full): the stats map's slot 1, per CPU. */
	unsigned long long drops = 0, *per = calloc(ncpu, sizeof(*per));
	unsigned int slot = 1;
	if (per && !bpf_map_lookup_elem(bpf_object__find_map_fd_by_name(o, "stats"), &slot, per))
		for (int c = 0; c < ncpu; c++)
			drops += per[c];
	printf("%llu %llu %llu %llu\n", run_cnt, run_ns, records, drops);
	return 0;
}
