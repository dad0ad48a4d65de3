"""Registration methods: the identity baseline, plain instance optimisation, classical SimpleITK
registration, VoxelMorph, its meta-learned initialisation for test-time optimisation, and a network meta-trained to
predict the starting field of instance optimisation.

`REG_METHODS` is the registry by name; `medmeta.methods.registration.base.RegistrationMethod` is their
interface. Their episodes are `medmeta.tasks.registration.PairEpisode` (targets: image pairs).
"""

from __future__ import annotations

from medmeta.methods.registration.base import FieldPredictor, Identity, RegistrationMethod
from medmeta.methods.registration.classical import ClassicalRegistration
from medmeta.methods.registration.field_init import FieldInitRegistration
from medmeta.methods.registration.instance_opt import InstanceOptimisation
from medmeta.methods.registration.meta_init import MetaInitRegistration
from medmeta.methods.registration.voxelmorph import VoxelMorph

REG_METHODS: dict[str, type[RegistrationMethod]] = {
    "identity": Identity,
    "instance_opt": InstanceOptimisation,
    "classical": ClassicalRegistration,
    "voxelmorph": VoxelMorph,
    "meta_init": MetaInitRegistration,
    "field_init": FieldInitRegistration,
}

__all__ = ["REG_METHODS", "FieldPredictor", "RegistrationMethod"]
