// Moved to sandbox-svc/api/exec_validation.h. Kept only for manager/templates.cc, which
// still includes this path; delete once it includes the new one.
#pragma once

#include "sandbox-svc/api/exec_validation.h"
