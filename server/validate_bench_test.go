package server

import (
	"testing"
)

func BenchmarkValidateUsage(b *testing.B) {
	body := []byte(`{"patientId":100,"timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}`)
	var p usageParser
	b.ReportAllocs()
	for b.Loop() {
		if _, bad := validateUsage(&p, body); bad != nil {
			b.Fatal(string(bad))
		}
	}
}
