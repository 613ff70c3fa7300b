# Included by proxy.pyx: the circuit breaker (shared by every worker) and weighted splits.
#
# Circuit breaker (docs/traffic.md): "more than max_failures failures within window opens the
# circuit for open_for; then half_open_requests probes: success closes, failure
# re-opens". Counts and state live in one slot of a shared anonymous mapping made before
# the workers fork, updated with GCC atomics, so every worker's failures count and a trip
# is seen by all of them at once. The request path reads one word (the state) and, only
# while open, one more (open_until); counting happens only on failures.
#
# The window slides in buckets of window/100 (at least 10 ms, so at most 1 s up to a 100 s
# window). Each bucket is one 64-bit word: the bucket's absolute index in its high 40
# bits and its failure count in the low 24, updated by compare-and-swap, so a bucket is
# claimed for a new period and counted in one step and no increment is ever lost.

from libc.stdint cimport int64_t, uint64_t

cdef extern from *:
    """
    #include <stdint.h>
    static inline int64_t fp_load(int64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void fp_store(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline int64_t fp_add(int64_t *p, int64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL); }
    static inline int fp_cas(int64_t *p, int64_t expected, int64_t desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    """
    int64_t fp_load(int64_t *p) nogil
    void fp_store(int64_t *p, int64_t v) nogil
    int64_t fp_add(int64_t *p, int64_t v) nogil
    bint fp_cas(int64_t *p, int64_t expected, int64_t desired) nogil

cdef enum:
    NBUCKETS = 128
    BREAKER_SLOTS = 1024
    COUNT_BITS = 24
    CIRCUIT_CLOSED = 0
    CIRCUIT_OPEN = 1
    CIRCUIT_HALF_OPEN = 2
    GATE_REJECT = -1
    GATE_PASS = 0
    GATE_PROBE = 1

cdef struct BreakerSlot:
    int64_t owner              # hash of the cluster name that claimed this slot; 0: free
    int64_t state
    int64_t open_until_ms
    int64_t probes             # half-open probes granted since the circuit half-opened
    int64_t trips
    int64_t buckets[NBUCKETS]

SHARED_BYTES = BREAKER_SLOTS * sizeof(BreakerSlot)

cdef inline int64_t monotonic_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1000 + ts.tv_nsec // 1000000


cdef class SharedCounters:
    """The shared mapping that holds every cluster's breaker slot."""
    cdef object buffer            # an mmap (shared by forked workers) or a bytearray
    cdef unsigned char[::1] view
    cdef BreakerSlot* slots

    def __init__(self, buffer=None):
        if buffer is None:
            buffer = bytearray(SHARED_BYTES)
        if len(buffer) < SHARED_BYTES:
            raise ValueError(f"shared counters need {SHARED_BYTES} bytes")
        self.buffer = buffer
        self.view = buffer
        self.slots = <BreakerSlot*>&self.view[0]

    cdef int slot_for(self, str cluster) except -2:
        """The slot of a cluster name: found, or claimed (CAS on `owner`) in the shared
        table, so every worker — restarted ones and reloads included — agrees, and a reload
        that adds or removes clusters never moves a circuit to another name. -1: full."""
        cdef int64_t owner = int.from_bytes(
            hashlib.blake2b(cluster.encode(), digest_size=8).digest(), "little", signed=True) or 1
        cdef int i, start = <int>((<uint64_t>owner) % BREAKER_SLOTS)
        cdef int64_t found
        for i in range(BREAKER_SLOTS):
            found = fp_load(&self.slots[(start + i) % BREAKER_SLOTS].owner)
            if found == owner:
                return (start + i) % BREAKER_SLOTS
            if found == 0 and fp_cas(&self.slots[(start + i) % BREAKER_SLOTS].owner, 0, owner):
                return (start + i) % BREAKER_SLOTS
            if fp_load(&self.slots[(start + i) % BREAKER_SLOTS].owner) == owner:
                return (start + i) % BREAKER_SLOTS   # another worker claimed it just now
        return -1


cdef class Breaker:
    """One cluster's circuit, as seen by this worker (the counts are shared)."""
    cdef BreakerSlot* slot
    cdef readonly str cluster
    cdef int64_t max_failures
    cdef int64_t window_ms
    cdef int64_t bucket_ms
    cdef int64_t open_for_ms
    cdef int64_t half_open

    cdef int gate(self, int64_t now) noexcept:
        """May a request go to the cluster now? PASS, PROBE (a half-open probe) or REJECT."""
        cdef int64_t state = fp_load(&self.slot.state)
        if state == CIRCUIT_CLOSED:
            return GATE_PASS
        cdef int64_t probes
        if state == CIRCUIT_OPEN:
            if now < fp_load(&self.slot.open_until_ms):
                return GATE_REJECT
            # probes was reset when the circuit opened; whoever moves it on, it is due
            fp_cas(&self.slot.state, CIRCUIT_OPEN, CIRCUIT_HALF_OPEN)
        while True:
            probes = fp_load(&self.slot.probes)
            if probes >= self.half_open:
                # a backstop: probes that never reported (a leak) must not hold the
                # circuit half-open for ever; after another open_for, probe again
                if now > fp_load(&self.slot.open_until_ms) + self.open_for_ms and \
                        fp_cas(&self.slot.probes, probes, 0):
                    fp_store(&self.slot.open_until_ms, now)
                    continue
                return GATE_REJECT
            if fp_cas(&self.slot.probes, probes, probes + 1):
                return GATE_PROBE

    cdef bint would_reject(self, int64_t now) noexcept:
        """The gate would refuse a request now: open, or half-open with every probe out."""
        cdef int64_t state = fp_load(&self.slot.state)
        if state == CIRCUIT_CLOSED:
            return False
        if state == CIRCUIT_OPEN and now < fp_load(&self.slot.open_until_ms):
            return True
        return state == CIRCUIT_HALF_OPEN and fp_load(&self.slot.probes) >= self.half_open \
            and now <= fp_load(&self.slot.open_until_ms) + self.open_for_ms


    cdef int failures(self, int64_t now) noexcept:
        cdef int64_t current = now // self.bucket_ms, oldest = current - self.window_ms // self.bucket_ms
        cdef int64_t word, total = 0
        cdef int i
        for i in range(NBUCKETS):
            word = fp_load(&self.slot.buckets[i])
            if (word >> COUNT_BITS) > oldest:
                total += word & ((1 << COUNT_BITS) - 1)
        return total

    cdef void count_failure(self, int64_t now) noexcept:
        cdef int64_t index = now // self.bucket_ms
        cdef int64_t* bucket = &self.slot.buckets[index % NBUCKETS]
        cdef int64_t word, new
        while True:
            word = fp_load(bucket)
            if (word >> COUNT_BITS) == index:
                if (word & ((1 << COUNT_BITS) - 1)) == (1 << COUNT_BITS) - 1:
                    return   # saturated: the count must never spill into the index bits
                new = word + 1
            else:
                new = (index << COUNT_BITS) | 1
            if fp_cas(bucket, word, new):
                return

    cdef void record(self, bint failure, int probe, int64_t now):
        """The outcome of a request that went to the cluster."""
        cdef int i
        if probe == GATE_PROBE:
            if failure:
                fp_store(&self.slot.open_until_ms, now + self.open_for_ms)
                if fp_cas(&self.slot.state, CIRCUIT_HALF_OPEN, CIRCUIT_OPEN):
                    fp_store(&self.slot.probes, 0)   # nobody grants probes while it is open
                    fp_add(&self.slot.trips, 1)
                    log.warning("cluster %s: circuit re-opened for %gs: the half-open probe failed",
                                self.cluster, self.open_for_ms / 1000.0)
            elif fp_cas(&self.slot.state, CIRCUIT_HALF_OPEN, CIRCUIT_CLOSED):
                for i in range(NBUCKETS):
                    fp_store(&self.slot.buckets[i], 0)
                log.warning("cluster %s: circuit closed: the half-open probe succeeded", self.cluster)
            return
        if not failure:
            return  # successes do not reset the window
        self.count_failure(now)
        if fp_load(&self.slot.state) == CIRCUIT_CLOSED and self.failures(now) > self.max_failures:
            fp_store(&self.slot.open_until_ms, now + self.open_for_ms)
            if fp_cas(&self.slot.state, CIRCUIT_CLOSED, CIRCUIT_OPEN):
                fp_store(&self.slot.probes, 0)
                fp_add(&self.slot.trips, 1)
                log.warning("cluster %s: circuit opened for %gs: more than %d failures within %gs",
                            self.cluster, self.open_for_ms / 1000.0, self.max_failures,
                            self.window_ms / 1000.0)

    def check(self):
        """gate() from Python (benchmarks): 0 pass, 1 probe, -1 reject."""
        return self.gate(monotonic_ms())

    def outcome(self, bint failure, int probe=GATE_PASS):
        """record() from Python (benchmarks and tests)."""
        self.record(failure, probe, monotonic_ms())

    def snapshot(self):
        """{"state", "failures", "trips", "open_until"} for the admin API; open_until is
        when the last opening ends (time.monotonic() seconds; 0: it never opened)."""
        cdef int64_t now = monotonic_ms()
        cdef int64_t state = fp_load(&self.slot.state)
        cdef int64_t open_until = fp_load(&self.slot.open_until_ms)
        if state == CIRCUIT_OPEN and now >= open_until:
            state = CIRCUIT_HALF_OPEN   # due for probes: the next request is one
        return {"state": ("closed", "open", "half_open")[state], "failures": self.failures(now),
                "trips": fp_load(&self.slot.trips), "open_until": open_until / 1000.0}


cdef Breaker make_breaker(SharedCounters shared, str cluster, conf):
    cdef int slot = shared.slot_for(cluster)
    if slot < 0:
        log.error("cluster %s: no free circuit-breaker slot (%d in use): no breaker", cluster,
                  BREAKER_SLOTS)
        return None
    cdef Breaker b = Breaker()
    b.slot = &shared.slots[slot]
    b.cluster = cluster
    b.max_failures = conf.max_failures
    b.window_ms = max(1, <int64_t>(conf.window * 1000))
    b.bucket_ms = max(10, b.window_ms // 100)
    b.open_for_ms = <int64_t>(conf.open_for * 1000)
    b.half_open = conf.half_open_requests
    return b


def count_failures(SharedCounters shared, int slot, int n, double window=10.0):
    """Add n failures to a slot (tests: concurrent increments from several processes)."""
    cdef Breaker b = Breaker()
    b.slot = &shared.slots[slot]
    b.window_ms = <int64_t>(window * 1000)
    b.bucket_ms = max(10, b.window_ms // 100)
    cdef int i
    cdef int64_t now = monotonic_ms()
    for i in range(n):
        b.count_failure(now)
    return b.failures(now)


# -- retry budget ----------------------------------------------------------------------------

cdef enum:
    BUDGET_WINDOW = 10       # seconds of requests and retries a budget remembers


cdef class RetryBudget:
    """Linkerd's retry budget, per worker: over the last BUDGET_WINDOW seconds, retries
    may number `min_per_second` * BUDGET_WINDOW plus `ratio` of the requests. The floor
    lets a quiet service retry; the ratio keeps retries from multiplying load on a busy
    one that is failing."""
    cdef double ratio
    cdef double floor                # min_per_second * BUDGET_WINDOW
    cdef int64_t sec[BUDGET_WINDOW]
    cdef int requests[BUDGET_WINDOW]
    cdef int retries[BUDGET_WINDOW]

    cdef inline int _bucket(self, int64_t now_ms):
        cdef int64_t sec = now_ms // 1000
        cdef int i = sec % BUDGET_WINDOW
        if self.sec[i] != sec:
            self.sec[i] = sec
            self.requests[i] = 0
            self.retries[i] = 0
        return i

    cdef void count_request(self, int64_t now_ms):
        self.requests[self._bucket(now_ms)] += 1

    cdef bint take_retry(self, int64_t now_ms):
        """One retry, if the budget has room for it."""
        cdef int64_t oldest = now_ms // 1000 - BUDGET_WINDOW
        cdef int i, requests = 0, retries = 0
        cdef int now = self._bucket(now_ms)
        for i in range(BUDGET_WINDOW):
            if self.sec[i] > oldest:
                requests += self.requests[i]
                retries += self.retries[i]
        if retries >= self.floor + requests * self.ratio:
            return False
        self.retries[now] += 1
        return True


cdef RetryBudget make_budget(RetryBudget old, conf):
    """The budget for `conf` (a config RetryBudget), keeping `old`'s counts across a reload."""
    cdef RetryBudget b = old if old is not None else RetryBudget()
    b.ratio = conf.ratio
    b.floor = conf.min_per_second * BUDGET_WINDOW
    return b


# -- weighted splits ------------------------------------------------------------------------

cdef class Split:
    """Smooth weighted round-robin over clusters (nginx's algorithm): each pick adds every
    eligible member's weight to its running score and takes the highest, which then gives
    back the total. Every cycle of sum(weights) picks is exact, so any 1,000 consecutive
    picks are within one cycle's rounding of the weights' shares."""
    cdef list members          # Cluster
    cdef int n
    cdef int64_t* weights
    cdef int64_t* current

    def __dealloc__(self):
        free(self.weights)
        free(self.current)

    cdef Cluster pick(self, int64_t now, int* why):
        """The next cluster; None when every member is excluded (why: 1 all open circuits)."""
        cdef int i, best = -1, open_members = 0, excluded = 0
        cdef int64_t total = 0
        cdef Cluster cl
        for i in range(self.n):
            if self.weights[i] == 0:
                continue
            cl = self.members[i]
            if cl.breaker is not None and cl.breaker.would_reject(now):
                open_members += 1
                continue
            if not cl.has_healthy(now):
                excluded += 1
                continue
            self.current[i] += self.weights[i]
            total += self.weights[i]
            if best < 0 or self.current[i] > self.current[best]:
                best = i
        if best < 0:
            why[0] = 1 if open_members and not excluded else 0
            return None
        self.current[best] -= total
        return self.members[best]


    def next(self):
        """The next cluster's name (benchmarks and tests)."""
        cdef int why = 0
        cdef Cluster cl = self.pick(monotonic_ms(), &why)
        return None if cl is None else cl.name


cdef Split make_split(list clusters, list weights):
    cdef Split s = Split()
    cdef int i
    s.members = clusters
    s.n = len(clusters)
    s.weights = <int64_t*>malloc(s.n * sizeof(int64_t))
    s.current = <int64_t*>calloc(s.n, sizeof(int64_t))
    if s.weights is NULL or s.current is NULL:
        raise MemoryError()
    for i in range(s.n):
        s.weights[i] = weights[i]
    return s
