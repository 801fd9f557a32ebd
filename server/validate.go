package server

import (
	"bytes"
	"encoding/binary"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/valyala/fastjson"
)

// Limits of the usage fields, in bytes of the decoded string.
const (
	maxPatientID  = 64
	maxTimestamp  = 64
	maxMedication = 128
)

// errBody is a ready JSON error body: {"error":"..."}.
type errBody []byte

func jsonError(msg string) errBody {
	var b strings.Builder
	b.WriteString(`{"error":`)
	b.Write(appendJSONString(nil, msg))
	b.WriteString("}")
	return errBody(b.String())
}

func appendJSONString(dst []byte, s string) []byte {
	var a fastjson.Arena
	return a.NewString(s).MarshalTo(dst)
}

// The validation errors are built once, so rejecting a request allocates
// nothing either.
var (
	errEmpty        = jsonError("request body is empty: send one JSON object, e.g. {\"patientId\":100,\"timestamp\":\"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)\",\"medication\":\"Albuterol\"}")
	errUTF8         = jsonError("request body is not valid UTF-8: encode the JSON as UTF-8")
	errSyntax       = jsonError("request body is not valid JSON: send one JSON object")
	errTrailing     = jsonError("request body has data after the JSON object: send exactly one object per request")
	errNotObject    = jsonError("request body must be a JSON object, not an array, string, number, boolean or null")
	errIDField      = jsonError("field id must not be sent: the server assigns ids")
	errPatientID    = jsonError("field patientId must be an integer or a non-empty string of at most 64 bytes")
	errPatientIDNo  = jsonError("field patientId is required: an integer or a non-empty string of at most 64 bytes")
	errPatientIDDup = jsonError("field patientId appears more than once: send it once")
	errTimestamp    = jsonError("field timestamp must be a number or a non-empty string of at most 64 bytes")
	errTimestampNo  = jsonError("field timestamp is required: a number or a non-empty string of at most 64 bytes")
	errTimestampDup = jsonError("field timestamp appears more than once: send it once")
	errMedication   = jsonError("field medication must be a non-empty string of at most 128 bytes")
	errMedicationNo = jsonError("field medication is required: a non-empty string of at most 128 bytes")
	errMedDup       = jsonError("field medication appears more than once: send it once")
)

// usageCheck collects what one pass over an object's fields found.
type usageCheck struct {
	patient, timestamp, medication int
	err                            errBody
	// lax: a field's value is one whose strictness the pass does not
	// check (a nested object or array); the whole body then goes through
	// fastjson's validator.
	lax bool
	p   *usageParser // its num holds the text of the last number visited
}

// usageParser is a fastjson parser with the scratch space validateUsage
// needs. The zero value is ready to use; one must not be shared.
type usageParser struct {
	fastjson.Parser
	num []byte // scratch for a number's text
}

// usageParsers pools usageParsers.
type usageParsers struct{ pool sync.Pool }

func (ps *usageParsers) Get() *usageParser {
	if p, ok := ps.pool.Get().(*usageParser); ok {
		return p
	}
	return new(usageParser)
}

func (ps *usageParsers) Put(p *usageParser) { ps.pool.Put(p) }

func (c *usageCheck) visit(k []byte, v *fastjson.Value) {
	if c.err != nil {
		return
	}
	t := v.Type()
	if t == fastjson.TypeNumber && !c.strictNumber(v) {
		c.err = errSyntax
		return
	}
	switch string(k) {
	case "patientId":
		c.patient++
		if c.patient > 1 {
			c.err = errPatientIDDup
			return
		}
		switch t {
		case fastjson.TypeNumber:
			// c.p.num holds its text (strictNumber).
			if !shortInt(c.p.num) {
				if _, err := v.Int64(); err != nil {
					c.err = errPatientID
				}
			}
		case fastjson.TypeString:
			if !stringLen(v, maxPatientID) {
				c.err = errPatientID
			}
		default:
			c.err = errPatientID
		}
	case "timestamp":
		c.timestamp++
		if c.timestamp > 1 {
			c.err = errTimestampDup
			return
		}
		switch t {
		case fastjson.TypeNumber:
		case fastjson.TypeString:
			if !stringLen(v, maxTimestamp) {
				c.err = errTimestamp
			}
		default:
			c.err = errTimestamp
		}
	case "medication":
		c.medication++
		if c.medication > 1 {
			c.err = errMedDup
			return
		}
		if t != fastjson.TypeString || !stringLen(v, maxMedication) {
			c.err = errMedication
		}
	case "id":
		c.err = errIDField
	default:
		if t == fastjson.TypeObject || t == fastjson.TypeArray {
			c.lax = true
		}
	}
}

// strictNumber reports whether number v is written as JSON allows.
// fastjson's parser also takes NaN, Inf, +1, 01 and 1. as numbers.
func (c *usageCheck) strictNumber(v *fastjson.Value) bool {
	c.p.num = v.MarshalTo(c.p.num[:0])
	return jsonNumber(c.p.num)
}

// jsonNumber reports whether b is a number in JSON's grammar (RFC 8259,
// section 6): -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?
func jsonNumber(b []byte) bool {
	if len(b) > 0 && b[0] == '-' {
		b = b[1:]
	}
	n := digits(b)
	if n == 0 || b[0] == '0' && n > 1 {
		return false
	}
	b = b[n:]
	if len(b) > 0 && b[0] == '.' {
		n = digits(b[1:])
		if n == 0 {
			return false
		}
		b = b[1+n:]
	}
	if len(b) > 0 && (b[0] == 'e' || b[0] == 'E') {
		b = b[1:]
		if len(b) > 0 && (b[0] == '-' || b[0] == '+') {
			b = b[1:]
		}
		n = digits(b)
		if n == 0 {
			return false
		}
		b = b[n:]
	}
	return len(b) == 0
}

// shortInt reports whether n, a number jsonNumber accepts, is an integer
// of at most 18 digits: one that always fits an int64.
func shortInt(n []byte) bool {
	if len(n) > 0 && n[0] == '-' {
		n = n[1:]
	}
	return len(n) <= 18 && digits(n) == len(n)
}

// digits returns the number of decimal digits b starts with.
func digits(b []byte) int {
	for i, c := range b {
		if c < '0' || c > '9' {
			return i
		}
	}
	return len(b)
}

func stringLen(v *fastjson.Value, maxLen int) bool {
	b, err := v.StringBytes()
	return err == nil && len(b) > 0 && len(b) <= maxLen
}

// scanText reports, eight bytes at a time, whether b is plain: no control
// character (below 0x20) and no backslash, and whether it is ASCII. JSON
// text that is plain has no escape and no raw control character in any
// string, which is what fastjson's parser lets through and its validator
// refuses; ASCII text is valid UTF-8.
func scanText(b []byte) (plain, ascii bool) {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	var special, all uint64
	for ; len(b) >= 8; b = b[8:] {
		x := binary.LittleEndian.Uint64(b)
		y := x ^ '\\'*ones
		// A byte below 0x20 in x, or a zero byte in y (a backslash in x),
		// sets its high bit (Hacker's Delight, 6-1).
		special |= (x-0x20*ones)&^x | (y-ones)&^y
		all |= x
	}
	plain, ascii = special&highs == 0, all&highs == 0
	for _, c := range b {
		plain = plain && c >= 0x20 && c != '\\'
		ascii = ascii && c < 0x80
	}
	return plain, ascii
}

// validateUsage checks that body is exactly one usage object: valid UTF-8,
// valid JSON, no trailing data, the required fields with the right types.
// On success it returns the body with surrounding white space trimmed.
// p must not be shared.
//
// fastjson's parser checks the structure but not everything inside strings
// and numbers, so a body is also checked strictly: by scanText and
// strictNumber when it is one line without escapes and its other fields
// are scalars, the usual case, and by fastjson's validator otherwise.
func validateUsage(p *usageParser, body []byte) ([]byte, errBody) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, errEmpty
	}
	plain, ascii := scanText(body)
	if !ascii && !utf8.Valid(body) {
		return nil, errUTF8
	}
	if body[0] != '{' {
		if fastjson.ValidateBytes(body) == nil {
			return nil, errNotObject
		}
		return nil, syntaxError(body)
	}
	v, err := p.ParseBytes(body)
	if err != nil {
		return nil, syntaxError(body)
	}
	o, err := v.Object()
	if err != nil {
		return nil, errNotObject
	}
	c := usageCheck{p: p}
	o.Visit(func(k []byte, v *fastjson.Value) { c.visit(k, v) })
	if (c.err != nil || c.lax || !plain) && fastjson.ValidateBytes(body) != nil {
		return nil, syntaxError(body)
	}
	switch {
	case c.err != nil:
		return nil, c.err
	case c.patient == 0:
		return nil, errPatientIDNo
	case c.timestamp == 0:
		return nil, errTimestampNo
	case c.medication == 0:
		return nil, errMedicationNo
	}
	return body, nil
}

// syntaxError tells trailing data apart from other syntax errors. It is only
// called on bad input, so it may allocate.
func syntaxError(body []byte) errBody {
	if err := fastjson.ValidateBytes(body); err != nil && strings.HasPrefix(err.Error(), "unexpected tail") {
		return errTrailing
	}
	return errSyntax
}
