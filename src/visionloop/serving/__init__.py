"""Real-time REST serving of the registry champion."""
