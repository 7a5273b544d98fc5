/* floor.sh variant "agg": what in-kernel HTTP/1 aggregation would pay per
 * exchange, instead of two ring records and the agent's parsing. A read
 * (<= AGG_HEAD bytes of a plain buffer) that is one whole request head
 * stores its start, size and a hash of its request line in the
 * connection; the response's write is scanned for its status and
 * Content-Length, and the exchange is added to a per-CPU hash keyed by
 * connection, request-line hash, second, status and latency bucket (16
 * per octave, as coral_store::hist). A measurement of the design's cost,
 * not a capture: anything else is ignored. */
#define AGG_HEAD 256

struct agg_key {
	__u64 conn_start_ns;
	__u64 line_hash;
	__u32 fd;
	__u32 second;
	__u16 status;
	__u16 bucket;
	__u32 _pad;
};

struct agg_val {
	__u64 count;
	__u64 sum_ns;
	__u64 max_ns;
	__u64 bytes_in;
	__u64 bytes_out;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct agg_key);
	__type(value, struct agg_val);
} aggs SEC(".maps");

/* 2^(k/16) for k = 0..15, as 32.32 fixed point fractions (the mantissa
 * thresholds of coral_store::hist's buckets). */
static const __u64 octave[16] = {
	4294967296ULL, 4485121744ULL, 4683695048ULL, 4891059943ULL,
	5107605667ULL, 5333738689ULL, 5569883475ULL, 5816483285ULL,
	6074001000ULL, 6342919999ULL, 6623745059ULL, 6917003306ULL,
	7223245206ULL, 7543045592ULL, 7877004752ULL, 8225749546ULL,
};

static __always_inline __u16 agg_bucket(__u64 us)
{
	if (us <= 1)
		return 0;
	__u32 p = 0;
	for (int i = 0; i < 40; i++) {
		if ((us >> (p + 1)) == 0)
			break;
		p++;
	}
	/* the mantissa us / 2^p in 32.32 */
	__u64 m = p <= 31 ? us << (32 - p) : us >> (p - 32);
	__u32 k = 0;
	for (int i = 1; i < 16; i++)
		if (m > octave[i & 15])
			k = i;
	/* ceil(log2(us) * 16): exact powers of two end a bucket */
	return (__u16)(p * 16 + (m > octave[0] ? k + 1 : 0));
}

/* The scan of a head in scratch, 8 bytes per bpf_loop step (a plain loop
 * over the bytes is too much for the verifier). */
struct agg_scan {
	__u32 n; /* bytes in scratch */
	__u32 line; /* where the current line begins */
	__u32 end; /* after the blank line; 0 until found */
	__u32 _pad;
	__s64 clen; /* Content-Length, -1: none */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct agg_scan);
} agg_scans SEC(".maps");

struct agg_ctx {
	struct agg_scan *s;
	struct data_event *e;
};

static long agg_step(__u64 i, void *ctx)
{
	struct agg_ctx *cx = ctx;
	struct agg_scan *s = cx->s;
	struct data_event *e = cx->e;
	if (!s || !e)
		return 1;
	__u32 off = i * 8;
	if (off >= s->n || off >= AGG_HEAD)
		return 1;
	__u64 w = *(const __u64 *)&e->data[off & (AGG_HEAD - 1)];
	if (s->n - off < 8)
		w &= (1ULL << ((s->n - off) * 8)) - 1;
	__u64 x = w ^ 0x0a0a0a0a0a0a0a0aULL;
	if (((x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL) == 0)
		return 0;
	for (int j = 0; j < 8; j++) {
		if (((w >> (j * 8)) & 0xff) != '\n')
			continue;
		__u32 p = off + j;
		if (p <= s->line + 1) {
			s->end = p + 1;
			return 1;
		}
		__u32 line = p + 1;
		s->line = line;
		if (line + 24 > AGG_HEAD)
			continue;
		__u64 w0 = *(const __u64 *)&e->data[line & (AGG_HEAD - 1)] | 0x2020202020202020ULL;
		__u64 w1 = *(const __u64 *)&e->data[(line + 8) & (AGG_HEAD - 1)] | 0x2020202020202020ULL;
		/* "content-" "length:" */
		if (w0 != 0x2d746e65746e6f63ULL || (w1 & 0x00ffffffffffffffULL) != 0x003a6874676e656cULL)
			continue;
		__s64 v = 0;
		for (int k = 15; k < 24; k++) {
			__u8 b = e->data[(line + k) & (AGG_HEAD - 1)];
			if (b == ' ')
				continue;
			if (b < '0' || b > '9')
				break;
			v = v * 10 + (b - '0');
		}
		s->clen = v;
	}
	return 0;
}

/* A head in scratch's first n bytes: the offset after its blank line (0:
 * not whole), and its Content-Length (-1: none). */
static __always_inline __u32 agg_scan(struct data_event *e, __u32 n, __s64 *clen)
{
	__u32 zero = 0;
	struct agg_scan *s = bpf_map_lookup_elem(&agg_scans, &zero);
	if (!s)
		return 0;
	struct agg_ctx x = { .s = s, .e = e };
	s->n = n;
	s->line = 0;
	s->end = 0;
	s->clen = -1;
	bpf_loop(AGG_HEAD / 8, agg_step, &x, 0);
	*clen = s->clen;
	return s->end;
}

static __always_inline int agg(struct conn *c, __u8 dir, long ret, __u64 buf, int kind)
{
	if (kind != ARG_BUF)
		return 0;
	__u32 zero = 0;
	struct data_event *e = bpf_map_lookup_elem(&scratch, &zero);
	if (!e)
		return 0;
	__u64 n = (__u64)ret;
	barrier_var(n);
	if (n > AGG_HEAD)
		n = AGG_HEAD;
	if (bpf_probe_read_user(e->data, n, (void *)buf))
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__s64 clen;
	__u32 end = agg_scan(e, n, &clen);
	if (dir == DIR_IN) {
		/* one whole request head, no body */
		if (end == 0 || end != ret || clen > 0)
			return 0;
		/* FNV-1a over the head's first line, 8 bytes at a time */
		__u64 h = 14695981039346656037ULL;
		for (__u32 i = 0; i < AGG_HEAD / 8; i++) {
			h = (h ^ *(const __u64 *)&e->data[(i * 8) & (AGG_HEAD - 1)]) * 1099511628211ULL;
			if (i * 8 + 8 >= end || e->data[(i * 8 + 7) & (AGG_HEAD - 1)] == '\n')
				break;
		}
		c->agg_hash = h;
		c->agg_start = now;
		c->agg_in = ret;
		c->agg_pending = 1;
		return 0;
	}
	if (!c->agg_pending || end == 0 || n < 12)
		return 0;
	c->agg_pending = 0;
	struct agg_key k = {};
	k.conn_start_ns = c->start_ns;
	k.line_hash = c->agg_hash;
	k.fd = (__u32)c->named;
	k.second = c->agg_start / 1000000000ULL;
	k.status = (e->data[9] - '0') * 100 + (e->data[10] - '0') * 10 + (e->data[11] - '0');
	__u64 d = now - c->agg_start;
	k.bucket = agg_bucket(d / 1000);
	struct agg_val *v = bpf_map_lookup_elem(&aggs, &k);
	if (!v) {
		struct agg_val z = {};
		bpf_map_update_elem(&aggs, &k, &z, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&aggs, &k);
		if (!v)
			return 0;
	}
	v->count++;
	v->sum_ns += d;
	if (d > v->max_ns)
		v->max_ns = d;
	v->bytes_in += c->agg_in;
	v->bytes_out += ret;
	return 0;
}
