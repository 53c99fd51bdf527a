// The watchdog of collectives, and the publishing of flight records (parallel/flight_recorder.h)
// that lets a timed-out rank name the ranks that did not arrive without the hung communicator.
//
// One watchdog thread per process, started with the first communicator. Every 200 ms it
//  * notices when this process itself did not run (a gap of over 2 s between its ticks: SIGSTOP,
//    a machine swapping) and moves every deadline on by the gap (FlightRecorder::Postpone): a
//    rank that was stopped must not blame the ranks that waited for it once it continues;
//  * checks the deadlines of the waits the MPI backend registered (FlightRecorder::Block with
//    watched = true); past one it prints the timeout report (ReportTimeout) and aborts the job
//    (MPI_Abort). The NCCL backend polls its own waits and calls ReportTimeout itself.
//
// Once PublishFlightRecords is called, a second thread writes this rank's state to
// <dir>/rank_<world rank>.json whenever it changed (at most every 0.5 s), and at least every
// second as a heartbeat; each write goes to a temporary name and is renamed, so readers never
// see half a file. A rank that is stopped or dead stops writing: its heartbeat goes stale. The
// publisher is a thread of its own so that a hung file system cannot keep the watchdog from
// aborting the job; readers in ReportTimeout are bounded in time for the same reason.
//
// The directory is normally the run directory on a file system every host shares. Where it is
// not shared, each rank sees only the files of the ranks on its own host: the report names the
// others as "no flight record from this run" and still shows this rank's own state.
//
// Thread safety: all functions may be called from any thread.
#pragma once

#include <functional>
#include <string>

#include "parallel/flight_recorder.h"

namespace ftune::parallel {

// Starts the watchdog thread (idempotent; communicators call it).
void StartWatchdog();

// Where the timeout report also goes (this rank's log file), with the warnings of publishing
// (`error` false); called from the watchdog's and the publisher's threads.
using FlightLog = std::function<void(bool error, const std::string& text)>;

// Publishes this rank's flight record into `dir` (created if missing) from now on. `run`: a token
// that every rank of this run shares and earlier runs in the same directory did not have (their
// files are ignored). Once publishing started, a second call changes nothing; where `dir` cannot
// be made, a warning goes to `log` and a timeout reports this rank's state only.
void PublishFlightRecords(const std::string& dir, const std::string& run, FlightLog log);

// Prints the report of a wait past its deadline to stderr and to the log: the collective, which
// ranks did not arrive or do not respond, and every rank's last collective. When several ranks
// time out at about the same time, the lowest-numbered one that also waits prints the full
// report; the others print one line naming it and give it a few seconds (at most ~15 s) to end
// the job before they report in full themselves. Returns when the caller should end the job;
// a second call (another thread) returns at once.
void ReportTimeout(const FlightRecorder::OverdueWait& w);

}  // namespace ftune::parallel
