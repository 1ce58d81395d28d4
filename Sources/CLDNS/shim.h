#ifndef SIGNPOST_CLDNS_SHIM_H
#define SIGNPOST_CLDNS_SHIM_H
#include <stdio.h>
#include <stdlib.h>
#include <ldns/ldns.h>
#endif
