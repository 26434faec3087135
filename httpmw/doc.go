// Package httpmw is net/http middleware that reads through from NEW to OLD at
// the HTTP layer, for handlers that take their database from the request
// context.
//
// It is being built; see issue 5.
package httpmw
