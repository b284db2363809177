// What must happen when the process loads, before `main` and before any thread exists.
#include "CStartup.h"
#include <stdlib.h>  // defines __GLIBC__ on glibc

#if defined(__GLIBC__)
#include <malloc.h>
#endif

static int arena_growth_step = 0;

// glibc grows an arena by what each allocation needs, one `mprotect` at a time beyond the
// writable region the arena's heap started with (the request plus `M_TOP_PAD`, 128 KiB by
// default). A fresh worker's threads made 665 to 6,710 such calls in one stream-process run,
// each holding the address space's lock against every other thread's page faults. With a
// pad of 64 MiB, a heap's whole reserved 64 MiB is writable from the start, and the same run
// makes 16 or 17 (`perf stat`, four runs; 16 MiB still left one run at 2,560). Pages are
// resident only once touched, and the worker's `malloc_trim(0)` every 10 s still gives all
// free memory back. Set before `main`, before any thread made an arena.
__attribute__((constructor)) static void finch_jobs_set_arena_growth_step(void) {
#if defined(__GLIBC__)
    const int step = 64 << 20;
    if (mallopt(M_TOP_PAD, step) == 1) arena_growth_step = step;
#endif
}

int finch_jobs_arena_growth_step(void) {
    return arena_growth_step;
}
