//go:build race

package main

// raceEnabled builds the binary the signal tests run with the race
// detector too, when the tests have it.
const raceEnabled = true
