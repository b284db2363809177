#ifndef FINCH_JOBS_CSTARTUP_H
#define FINCH_JOBS_CSTARTUP_H

/// The padding (bytes) every malloc arena grows by (`M_TOP_PAD`), set when the process loads;
/// 0 when the C library did not take it (not glibc).
int finch_jobs_arena_growth_step(void);

#endif
