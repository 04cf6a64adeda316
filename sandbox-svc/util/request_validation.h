// Moved to sandbox-svc/api/request_validation.h. Kept only for manager/manager.cc, which
// still includes this path; delete once it includes the new one.
#pragma once

#include "sandbox-svc/api/request_validation.h"
