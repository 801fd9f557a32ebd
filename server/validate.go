package server

import (
	"bytes"
	"strings"
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
}

func (c *usageCheck) visit(k []byte, v *fastjson.Value) {
	if c.err != nil {
		return
	}
	switch string(k) {
	case "patientId":
		c.patient++
		if c.patient > 1 {
			c.err = errPatientIDDup
			return
		}
		switch v.Type() {
		case fastjson.TypeNumber:
			if _, err := v.Int64(); err != nil {
				c.err = errPatientID
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
		switch v.Type() {
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
		if v.Type() != fastjson.TypeString || !stringLen(v, maxMedication) {
			c.err = errMedication
		}
	case "id":
		c.err = errIDField
	}
}

func stringLen(v *fastjson.Value, maxLen int) bool {
	b, err := v.StringBytes()
	return err == nil && len(b) > 0 && len(b) <= maxLen
}

// validateUsage checks that body is exactly one usage object: valid UTF-8,
// valid JSON, no trailing data, the required fields with the right types.
// On success it returns the body with surrounding white space trimmed.
// p is used for parsing and must not be shared.
func validateUsage(p *fastjson.Parser, body []byte) ([]byte, errBody) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, errEmpty
	}
	if !utf8.Valid(body) {
		return nil, errUTF8
	}
	if body[0] != '{' {
		if fastjson.ValidateBytes(body) == nil {
			return nil, errNotObject
		}
		return nil, syntaxError(body)
	}
	// fastjson's parser unescapes lazily and tolerates bad escapes and raw
	// control characters; the validator does not.
	if fastjson.ValidateBytes(body) != nil {
		return nil, syntaxError(body)
	}
	v, err := p.ParseBytes(body)
	if err != nil {
		return nil, errSyntax
	}
	o, err := v.Object()
	if err != nil {
		return nil, errNotObject
	}
	var c usageCheck
	o.Visit(func(k []byte, v *fastjson.Value) { c.visit(k, v) })
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
