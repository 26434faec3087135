// Command sweeper is the batch job around the coldsweep and tracker
// packages: init, run, verify, status and rebuild-tracker.
//
// It is being built; see issue 4.
package main
