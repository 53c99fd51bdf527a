// Preemption: SIGTERM and SIGUSR1 (Slurm's `--signal=USR1@N`, a scheduler's notice before it
// kills the job) only raise a flag; the training loop polls it after every step, agrees on it
// across ranks (a signal may reach the ranks at different steps), saves a checkpoint and exits
// with kPreemptedExitCode so a wrapper script can requeue the job.
//
// Thread safety: the flag is a lock-free atomic, safe from signal handlers and any thread.
#pragma once

namespace ftune::runtime {

// Exit status of a job that stopped for preemption after saving a complete checkpoint
// (EX_TEMPFAIL of sysexits.h: "try again later"). `ftune train` in the same run directory resumes.
inline constexpr int kPreemptedExitCode = 75;

// Installs the SIGTERM / SIGUSR1 handlers (idempotent). The previous handlers are restored by
// RestorePreemptionHandlers (or at process exit).
void InstallPreemptionHandlers();
void RestorePreemptionHandlers();
// Whether this process received SIGTERM or SIGUSR1 since installation, and which (0 = none).
bool PreemptionRequested();
int PreemptionSignal();
// For tests: raise or clear the flag as if a signal had arrived.
void RequestPreemption(int signal);
void ClearPreemption();

}  // namespace ftune::runtime
